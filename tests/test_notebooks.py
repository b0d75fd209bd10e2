"""The notebooks: pairs in sync and stripped, shape rules, and every part run with nbmake (smoke).

The nbmake runs share one run directory, in course order, as a reader would run them; each
notebook must also be able to start cold, which the first one run in a fresh folder shows.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

from tools import notebooks
from tools.run_course import select_parts

PAIRS = notebooks.notebook_pairs()
MAX_CELL_LINES = 40


def test_there_are_notebooks_and_each_pair_is_clean():
    assert [py.name[:2] for py, _ in PAIRS][:2] == ["01", "02"]
    bad = [msg for py, nb in PAIRS for msg in notebooks.problems(py, nb)]
    assert bad == []


@pytest.mark.parametrize("py", [py for py, _ in PAIRS], ids=lambda p: p.stem)
def test_notebook_shape(py):
    nb = jupytext.read(py)
    md = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert md[0].startswith(f"# Part {py.name[:2]} · ")
    text = "\n".join(md)
    for heading in ("**Objectives**", "**Prerequisites**", "## What you need from the earlier parts",
                    "## Recap", "## Exercises", "## Further reading"):
        assert heading in text, f"{py.name} lacks {heading}"
    long = [(i, c.source.count("\n") + 1) for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and c.source.count("\n") + 1 > MAX_CELL_LINES]
    assert long == [], f"{py.name}: cells over {MAX_CELL_LINES} lines: {long}"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0].source.startswith("PROFILE = None")


def _copy_pair(tmp_path: Path) -> tuple[Path, Path]:
    py, ipynb = PAIRS[0]
    shutil.copy(py, tmp_path / py.name)
    shutil.copy(ipynb, tmp_path / ipynb.name)
    return tmp_path / py.name, tmp_path / ipynb.name


def test_check_fails_when_the_source_drifts(tmp_path):
    py, ipynb = _copy_pair(tmp_path)
    assert notebooks.problems(py, ipynb) == []
    py.write_text(py.read_text() + "\n# %%\nprint('a new cell nobody synced')\n")
    assert any("differs from" in m for m in notebooks.problems(py, ipynb))
    assert notebooks.main(["check", "--dir", str(tmp_path)]) == 1
    notebooks.sync(tmp_path)
    assert notebooks.problems(py, ipynb) == []
    assert notebooks.main(["check", "--dir", str(tmp_path)]) == 0


def test_check_fails_on_outputs_and_missing_ipynb(tmp_path):
    py, ipynb = _copy_pair(tmp_path)
    nb = nbformat.read(ipynb, as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("stream", text="hello")]
    code.execution_count = 1
    nbformat.write(nb, ipynb)
    assert any("has outputs" in m for m in notebooks.problems(py, ipynb))
    ipynb.unlink()
    assert notebooks.problems(py, ipynb) == [f"{ipynb.name} is missing: run `python -m tools.notebooks sync`"]


def test_check_fails_without_bootstrap_cell(tmp_path):
    py, ipynb = _copy_pair(tmp_path)
    py.write_text(py.read_text().replace('print("course_utils: installed package")', 'print("changed")'))
    notebooks.sync(tmp_path)
    assert any("BOOTSTRAP_CELL" in m for m in notebooks.problems(py, ipynb))


def test_bootstrap_cell_pins_this_repository_at_the_package_version():
    import tomllib

    from tools.notebooks import GITHUB_REPO

    version = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["version"]
    assert notebooks.COURSE_UTILS_URL == f"git+https://github.com/{GITHUB_REPO}@v{version}"
    assert notebooks.BOOTSTRAP_CELL.count(notebooks.COURSE_UTILS_URL) == 1


@pytest.mark.parametrize("where", ["nowhere", "checkout", "installed"])
def test_bootstrap_cell_finds_or_pip_installs_course_utils(where, tmp_path, monkeypatch):
    """The cell run as a notebook runs it: pip only when course_utils is neither installed nor
    in a checkout above the working folder, and then the pinned URL."""
    import importlib.util

    pip_calls, found = [], importlib.util.find_spec
    if where == "checkout":
        (tmp_path / "course_utils").mkdir()
        (tmp_path / "course_utils" / "__init__.py").write_text("")
        (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks" if where == "checkout" else tmp_path)
    monkeypatch.delenv("COURSE_UTILS_PIP", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: pip_calls.append(cmd))
    if where != "installed":
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "course_utils" else found(name, *a))
    exec(notebooks.BOOTSTRAP_CELL, {})
    expected = [[sys.executable, "-m", "pip", "install", "-q", notebooks.COURSE_UTILS_URL]]
    assert pip_calls == (expected if where == "nowhere" else [])
    assert (sys.path[0] == str(tmp_path)) == (where == "checkout")


def test_select_parts():
    assert [p.name for p in select_parts("1,02")] == [PAIRS[0][1].name, PAIRS[1][1].name]
    with pytest.raises(SystemExit, match="no notebook for part"):
        select_parts("99")


@pytest.fixture(scope="module")
def smoke_run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke_run")


@pytest.mark.parametrize("ipynb", [nb for _, nb in PAIRS], ids=lambda p: p.stem)
def test_notebook_runs_under_smoke_with_nbmake(ipynb, smoke_run_dir):
    environ = {**os.environ, "COURSE_PROFILE": "smoke", "COURSE_RUN_DIR": str(smoke_run_dir),
               "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbmake",
         "--nbmake-timeout=900", str(ipynb)],
        env=environ, capture_output=True, text=True, cwd=ipynb.parent,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@pytest.mark.parametrize("py", [py for py, _ in PAIRS], ids=lambda p: p.stem)
def test_notebook_opens_with_kaggle_and_colab_links(py):
    from tools.notebooks import badge_links

    first = jupytext.read(py).cells[0].source
    links = badge_links(py.stem)
    assert links["kaggle_badge"] in first and links["colab_badge"] in first


def test_badges_follow_the_repository_setting(tmp_path, monkeypatch):
    py, _ = _copy_pair(tmp_path)
    monkeypatch.setenv("COURSE_GITHUB_REPO", "someone/fork")
    assert notebooks.update_badges(tmp_path) == [py]
    assert "github/someone/fork/blob/main/notebooks/" + py.stem in py.read_text().splitlines()[2]
    assert notebooks.update_badges(tmp_path) == []  # already current: nothing rewritten
    notebooks.sync(tmp_path)
    assert notebooks.problems(py, py.with_suffix(".ipynb")) == []
