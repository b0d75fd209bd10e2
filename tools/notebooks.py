"""Keep each `notebooks/NN_name.py` (source) and its generated `.ipynb` in step (tooling).

    python -m tools.notebooks sync    # regenerate every .ipynb from its .py, no outputs
    python -m tools.notebooks check   # exit 1 naming each pair that drifted
    python -m tools.notebooks badges  # rewrite the Kaggle/Colab links under each title

Every notebook's first code cell is `BOOTSTRAP_CELL`, word for word, so each part opens on
Kaggle or Colab as a single file (it pip-installs `COURSE_UTILS_URL` when `course_utils` is
nowhere to be found); `check` enforces that too.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import jupytext
import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
GITHUB_REPO = "gemma3-grpo-course/gemma3-grpo-course"  # owner/repo for the badges; env COURSE_GITHUB_REPO
GITHUB_BRANCH = "main"

# Where a notebook opened alone (Kaggle/Colab badge) installs `course_utils` from: this repository
# at the tag of the package's version (pyproject.toml). The one place the URL is written.
COURSE_UTILS_URL = "git+https://github.com/gemma3-grpo-course/gemma3-grpo-course@v0.1.0"

BOOTSTRAP_CELL = f'''\
# Make `course_utils` importable: installed, this repository or a Kaggle input, else pip-install it pinned.
import importlib, importlib.util, os, pathlib, subprocess, sys
COURSE_UTILS_URL = os.environ.get("COURSE_UTILS_PIP") or "{COURSE_UTILS_URL}"
here = pathlib.Path.cwd()
kaggle = [p for g in ("*", "*/*", "*/*/*") for p in pathlib.Path("/kaggle/input").glob(g)] + [pathlib.Path("/kaggle/usr/lib")]
root = next((p for p in [here, *here.parents, *kaggle] if (p / "course_utils" / "__init__.py").is_file()), None)
if importlib.util.find_spec("course_utils"):
    print("course_utils: installed package")
elif root is not None:
    sys.path.insert(0, str(root))
    print("course_utils: from", root)
else:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", COURSE_UTILS_URL], check=True)
    importlib.invalidate_caches()
    print("course_utils: pip-installed from", COURSE_UTILS_URL)'''


def notebook_pairs(directory: Path = NOTEBOOK_DIR) -> list[tuple[Path, Path]]:
    """(source .py, generated .ipynb) for every numbered notebook, in course order."""
    return [(py, py.with_suffix(".ipynb")) for py in sorted(directory.glob("[0-9][0-9]_*.py"))]


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def render(py: Path) -> nbformat.NotebookNode:
    """The notebook the .py source stands for, as jupytext writes it."""
    return jupytext.read(py)


def problems(py: Path, ipynb: Path) -> list[str]:
    """What is wrong with one pair: missing, out of sync, carrying outputs, wrong first cell."""
    found: list[str] = []
    if not ipynb.exists():
        return [f"{ipynb.name} is missing: run `python -m tools.notebooks sync`"]
    source = render(py)
    generated = nbformat.read(ipynb, as_version=4)
    if _cells(source) != _cells(generated):
        found.append(f"{ipynb.name} differs from {py.name}: run `python -m tools.notebooks sync`")
    for i, cell in enumerate(generated.cells):
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count")):
            found.append(f"{ipynb.name} cell {i} has outputs: run `python -m tools.notebooks sync`")
            break
    code = [c for c in source.cells if c.cell_type == "code"]
    if not code or code[0].source.strip() != BOOTSTRAP_CELL.strip():
        found.append(f"{py.name}: the first code cell must be tools.notebooks.BOOTSTRAP_CELL")
    if not any("parameters" in c.metadata.get("tags", []) for c in code):
        found.append(f"{py.name}: no cell tagged `parameters`")
    return found


def sync(directory: Path = NOTEBOOK_DIR) -> list[Path]:
    """Regenerate every .ipynb from its .py, stripped of outputs. Returns the files written."""
    written = []
    for py, ipynb in notebook_pairs(directory):
        nb = render(py)
        for i, cell in enumerate(nb.cells):
            cell.id = f"{py.stem[:2]}-{i:03d}"  # stable ids: a re-sync of an unchanged .py writes nothing
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nb.metadata.pop("jupytext", None)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        text = nbformat.writes(nb, version=4)
        if not ipynb.exists() or ipynb.read_text() != text:
            ipynb.write_text(text)
            written.append(ipynb)
    return written


def github_repo() -> str:
    repo = os.environ.get("COURSE_GITHUB_REPO", "").strip() or GITHUB_REPO
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ValueError(f"COURSE_GITHUB_REPO={repo!r} must look like owner/repository.")
    return repo


def badge_links(notebook_name: str) -> dict[str, str]:
    """"Open in Colab" / "Open in Kaggle" URLs and Markdown badges for one notebook.

    `notebook_name` is like "03_data_and_rewards" (".ipynb"/".py" optional). The repository is
    GITHUB_REPO, or COURSE_GITHUB_REPO when set.
    """
    name = Path(notebook_name).name.removesuffix(".ipynb").removesuffix(".py")
    if not re.fullmatch(r"\d\d_[A-Za-z0-9_]+", name):
        raise ValueError(f"notebook name {notebook_name!r} is not like 03_data_and_rewards.")
    repo = github_repo()
    path = f"{repo}/blob/{GITHUB_BRANCH}/notebooks/{name}.ipynb"
    github = f"https://github.com/{path}"
    colab = f"https://colab.research.google.com/github/{path}"
    kaggle = f"https://kaggle.com/kernels/welcome?src={github}"
    return {
        "github": github,
        "colab": colab,
        "kaggle": kaggle,
        "colab_badge": f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab})",
        "kaggle_badge": f"[![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)]({kaggle})",
    }


def update_badges(directory: Path = NOTEBOOK_DIR) -> list[Path]:
    """Put the current "Open in Kaggle" / "Open in Colab" links (from `GITHUB_REPO`)
    on the line under each notebook's title, in the .py sources; then run `sync`."""
    changed = []
    for py, _ in notebook_pairs(directory):
        lines = py.read_text().splitlines(keepends=True)
        links = badge_links(py.stem)
        line = f"# {links['kaggle_badge']} {links['colab_badge']}\n"
        if len(lines) > 2 and "Open in Kaggle" in lines[2]:
            if lines[2] == line:
                continue
            lines[2] = line
        else:
            lines[2:2] = [line, "#\n"]
        py.write_text("".join(lines))
        changed.append(py)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["sync", "check", "badges"])
    parser.add_argument("--dir", type=Path, default=NOTEBOOK_DIR)
    args = parser.parse_args(argv)
    if args.command == "badges":
        for path in update_badges(args.dir):
            print("updated", path)
        args.command = "sync"
    if args.command == "sync":
        for path in sync(args.dir):
            print("wrote", path)
        return 0
    bad = [msg for py, nb in notebook_pairs(args.dir) for msg in problems(py, nb)]
    print("\n".join(bad) or "all notebook pairs in sync")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
