"""Run the whole course: execute every notebook in order under one profile (the main job).

    python -m tools.run_course                  # cpu profile: real Gemma 3 270M, offline
    python -m tools.run_course --profile smoke  # seconds, tiny random model
    python -m tools.run_course --parts 01,02    # only some parts

While a part runs it prints a line per cell (`06_training: cell 12/40 (3m10s)`) and the
kernel's output lines (training's and evaluation's progress). Executed copies (with outputs) go to `<run dir>/executed/`, timings and each part's peak resident
memory (the kernel's high-water mark, read from /proc on Linux) to `<run dir>/run_course.json`; the run
stops at the first failing part and names it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import nbformat
import psutil  # an ipykernel dependency
from jupyter_client import KernelManager
from nbclient import NotebookClient

from course_utils.config import PROFILES
from course_utils.env import run_dir
from tools.notebooks import NOTEBOOK_DIR, notebook_pairs


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


def peak_rss_bytes(pid: int) -> int:
    """A process's peak resident memory: VmHWM from /proc (Linux), else its current RSS; 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


class PeakMemory:
    """The largest peak resident memory of any process started below this one (the notebook
    kernel), polled every `interval` seconds while the `with` block runs; `.gib` afterwards.

    A child caught between fork and exec still runs this process's program in this process's
    memory, and its VmHWM is this process's; it is skipped until it has exec'd (its command line
    is still ours), and a reading is kept only if the same process is still there afterwards."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._own_cmdline = psutil.Process().cmdline()

    def _poll(self) -> None:
        while True:
            try:
                children = psutil.Process().children(recursive=True)
            except psutil.Error:
                children = []
            for child in children:
                try:
                    if child.cmdline() == self._own_cmdline:  # not exec'd yet: our memory, not its
                        continue
                    peak = peak_rss_bytes(child.pid)
                    if child.is_running():  # same pid, same start time: not a reused pid
                        self.peak = max(self.peak, peak)
                except psutil.Error:
                    continue
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gib(self) -> float:
        return self.peak / 2**30


def clock(seconds: float) -> str:
    """Elapsed time as `3m10s` (or `42s`)."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressClient(NotebookClient):
    """nbclient's executor, saying what it does while it runs: a line per code cell
    (`06_training: cell 12/40 (3m10s)`, the part's elapsed time) and the kernel's stdout/stderr
    lines as they come (training's and evaluation's progress). A progress bar redrawn in place
    (`\\r`) is echoed at most every `bar_every` seconds.

    The kernel talks over IPC sockets in a private folder: ipykernel warns on every start that
    TCP without CurveZMQ keys is unencrypted, and IPC is what it recommends for a local kernel."""

    def __init__(self, nb: nbformat.NotebookNode, part: str, echo: Callable[[str], None] = print,
                 bar_every: float = 10.0, **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self.part, self.echo, self.bar_every = part, echo, bar_every
        self.code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
        self.started = time.perf_counter()
        self.last_bar = -bar_every
        self.on_cell_start = self.cell_started

    def cell_started(self, cell: Any, cell_index: int) -> None:
        if cell_index in self.code_cells:
            n = self.code_cells.index(cell_index) + 1
            self.echo(f"{self.part}: cell {n}/{len(self.code_cells)} ({clock(time.perf_counter() - self.started)})")

    def output(self, outs: list, msg: dict, display_id: str | None, cell_index: int) -> Any:
        if msg["msg_type"] == "stream":
            for line in msg["content"]["text"].split("\n"):
                redrawn = "\r" in line
                line = line.rsplit("\r", 1)[-1].rstrip() if redrawn else line.rstrip()
                now = time.perf_counter()
                if line and (not redrawn or now - self.last_bar >= self.bar_every):
                    self.last_bar = now if redrawn else self.last_bar
                    self.echo(f"  {line}")
        return super().output(outs, msg, display_id, cell_index)

    def create_kernel_manager(self) -> KernelManager:
        km = super().create_kernel_manager()
        self._ipc_dir = tempfile.TemporaryDirectory(prefix="course-kernel-")
        km.transport, km.ip = "ipc", os.path.join(self._ipc_dir.name, "kernel")
        return km


def execute(notebook: Path, out_dir: Path, timeout: int, echo: Callable[[str], None] = print) -> float:
    """Run one notebook in a fresh kernel from the notebooks folder, echoing its progress; save
    it with outputs."""
    nb = nbformat.read(notebook, as_version=4)
    start = time.perf_counter()
    client = ProgressClient(nb, notebook.stem, echo=echo, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}})
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

    out = run_dir(args.profile)
    notebooks = select_parts(args.parts)
    print(f"profile {args.profile}: running {len(notebooks)} part(s); outputs in {out}", flush=True)
    timings: dict[str, float] = {}
    peaks: dict[str, float] = {}
    summary = out / "run_course.json"
    for notebook in notebooks:
        print(f"▶ {notebook.stem} ...", flush=True)
        try:
            with PeakMemory() as memory:
                seconds = execute(notebook, out / "executed", args.timeout, echo=partial(print, flush=True))
        except Exception as err:  # nbclient's CellExecutionError carries the cell and traceback
            print(f"✗ {notebook.stem} failed (kernel peak {memory.gib:.2f} GiB resident); executed copy with the "
                  f"error: {out / 'executed' / notebook.name}")
            print(str(err)[-3000:], file=sys.stderr)
            return 1
        timings[notebook.stem] = round(seconds, 1)
        peaks[notebook.stem] = round(memory.gib, 2)
        print(f"✓ {notebook.stem} in {seconds:.0f} s, kernel peak {memory.gib:.2f} GiB resident", flush=True)
        record = {"profile": args.profile, "seconds": timings, "peak_rss_gib": peaks,
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        summary.write_text(json.dumps(record, indent=2) + "\n")
    print(f"all {len(notebooks)} part(s) ran in {sum(timings.values()):.0f} s; timings in {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
