"""The repository's contract: layout, the README's two commands, and what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks]


def test_readme_has_exactly_two_setup_commands():
    commands = _readme_commands()[:2]
    assert commands[0].endswith("-m course_utils.run_course")
    assert commands[1].endswith("-m pytest")
    assert "requirements.txt" in commands[0] and "requirements.txt" in commands[1]


def test_ci_runs_exactly_the_readme_test_command():
    lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l and not l.startswith("#")]
    assert lines[-1] == _readme_commands()[1]


def test_top_level_layout():
    required = {"notebooks", "course_utils", "data", "tests", "requirements.txt", "README.md", "LICENSE", ".ci"}
    present = {p.name for p in ROOT.iterdir()}
    assert required <= present
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]


def test_requirements_are_exact_pins():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.\-+]*", line), line
            assert "git+" not in line
