"""Run the whole course: execute every notebook in order under one profile (the main job).

    python -m course_utils.run_course                  # cpu profile: real Gemma 3 270M, offline
    python -m course_utils.run_course --profile smoke  # seconds, tiny random model
    python -m course_utils.run_course --parts 01,02    # only some parts

Executed copies (with outputs) go to `<run dir>/executed/`, timings to
`<run dir>/run_course.json`; the run stops at the first failing part and names it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nbformat

from course_utils.config import PROFILES
from course_utils.notebooks import NOTEBOOK_DIR, notebook_pairs


def select_parts(parts: str | None, directory: Path = NOTEBOOK_DIR) -> list[Path]:
    """The .ipynb files to run, in course order; `parts` is e.g. "01,03" (None = all)."""
    notebooks = [nb for _, nb in notebook_pairs(directory)]
    if not parts:
        return notebooks
    wanted = [p.strip().zfill(2) for p in parts.split(",") if p.strip()]
    chosen = [nb for nb in notebooks if nb.name[:2] in wanted]
    unknown = sorted(set(wanted) - {nb.name[:2] for nb in chosen})
    if unknown:
        have = ", ".join(nb.name[:2] for nb in notebooks)
        raise SystemExit(f"no notebook for part(s) {', '.join(unknown)}; the parts are {have}")
    return chosen


def execute(notebook: Path, out_dir: Path, timeout: int) -> float:
    """Run one notebook in a fresh kernel from the notebooks folder; save it with outputs."""
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    start = time.perf_counter()
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}
    )
    try:
        client.execute()
    finally:
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / notebook.name)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=os.environ.get("COURSE_PROFILE") or "cpu", choices=PROFILES)
    parser.add_argument("--parts", default=None, help="comma-separated part numbers, e.g. 01,02 (default: all)")
    parser.add_argument("--timeout", type=int, default=3 * 3600, help="seconds allowed per cell")
    args = parser.parse_args(argv)

    os.environ["COURSE_PROFILE"] = args.profile  # the kernels inherit it
    from course_utils.env import run_dir

    out = run_dir(args.profile)
    notebooks = select_parts(args.parts)
    print(f"profile {args.profile}: running {len(notebooks)} part(s); outputs in {out}", flush=True)
    timings: dict[str, float] = {}
    summary = out / "run_course.json"
    for notebook in notebooks:
        print(f"▶ {notebook.stem} ...", flush=True)
        try:
            seconds = execute(notebook, out / "executed", args.timeout)
        except Exception as err:  # nbclient's CellExecutionError carries the cell and traceback
            print(f"✗ {notebook.stem} failed; executed copy with the error: {out / 'executed' / notebook.name}")
            print(str(err)[-3000:], file=sys.stderr)
            return 1
        timings[notebook.stem] = round(seconds, 1)
        print(f"✓ {notebook.stem} in {seconds:.0f} s", flush=True)
        record = {"profile": args.profile, "seconds": timings, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        summary.write_text(json.dumps(record, indent=2) + "\n")
    print(f"all {len(notebooks)} part(s) ran in {sum(timings.values()):.0f} s; timings in {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
