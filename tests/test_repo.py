"""The repository's contract: layout, the README's two commands, and what CI runs."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside a function (`from p import m` → `p.m`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {f"{node.module}.{a.name}" for a in node.names} if node.module in ("course_utils", "tools") \
                else {node.module or ""}
    return names


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks]


def test_readme_has_exactly_two_setup_commands():
    commands = _readme_commands()[:2]
    assert commands[0].endswith("-m tools.run_course")
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


def test_tooling_lives_outside_the_installed_package():
    """`tools/` is run from the repository root, never installed, and the library never imports it."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["packages"] == ["course_utils"]
    assert (ROOT / "tools" / "__init__.py").is_file()
    for name in ("run_course", "kaggle_job", "notebooks", "rehearse", "proof", "bench_training"):
        assert (ROOT / "tools" / f"{name}.py").is_file() and not (ROOT / "course_utils" / f"{name}.py").exists()
    for module in sorted((ROOT / "course_utils").glob("*.py")):
        names = _imported_modules(module)
        assert not any(n == "tools" or n.startswith("tools.") for n in names), f"{module.name} imports {names}"


def test_tools_run_as_modules_from_the_repository_root():
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "tools.notebooks", "check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_course_utils_and_tools_have_no_import_cycles():
    """Every `course_utils` / `tools` import, module-level or inside a function, forms no cycle."""
    graph = {f"{package}.{path.stem}": _imported_modules(path)
             for package in ("course_utils", "tools") for path in (ROOT / package).glob("*.py")}

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for dep in sorted(graph.get(path[-1], ())):
            if dep == start:
                return path + [dep]
            if dep not in path and dep in graph and (found := cycle_from(start, path + [dep])):
                return found
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m, [m]))]
    assert not cycles, f"import cycles: {cycles}"
