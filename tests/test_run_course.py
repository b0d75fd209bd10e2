"""run_course: each part's peak memory (the kernel's high-water mark, not the job's own) and its
progress lines while it runs."""

import subprocess
import sys
from pathlib import Path

from tools.run_course import PeakMemory, peak_rss_bytes


def test_peak_memory_sees_a_child_that_allocates_and_frees():
    # The child touches 400 MB, frees it and lingers: only a high-water mark (or a poll during the
    # allocation) sees it, the child's RSS at the end does not.
    code = "import time; b = bytearray(400 * 2**20); time.sleep(1.0); del b; time.sleep(1.0)"
    with PeakMemory(interval=0.1) as memory:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert memory.peak >= 400 * 2**20
    assert memory.gib < 4  # the child's, not a sum over the machine


FORK_WITHOUT_EXEC = """
import os, sys, time
from tools.run_course import PeakMemory
big = bytearray(1 << 30)
big[::4096] = b"\\1" * (1 << 18)  # touch every page: this process is ~1 GiB resident
with PeakMemory(interval=0.05) as memory:
    pid = os.fork()
    if pid == 0:  # a fork that never execs: our program, our memory
        time.sleep(1.0)
        os._exit(0)
    os.waitpid(pid, 0)
print(memory.peak)
"""


def test_peak_memory_does_not_count_a_fork_that_has_not_exec_d_as_the_child_s():
    # Between fork and exec a child's VmHWM is its parent's: counting it reported the test
    # process's own 5.6 GiB as a child's peak once (CI). The parent here is ~1 GiB.
    out = subprocess.run([sys.executable, "-c", FORK_WITHOUT_EXEC], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) < 256 * 2**20


def test_peak_rss_of_a_missing_process_is_zero():
    assert peak_rss_bytes(2**22 + 12345) == 0


def test_execute_streams_each_cell_and_the_kernel_s_lines_without_the_transport_warning(tmp_path, capfd):
    """A tiny notebook through run_course's executor: a line per code cell, the kernel's stdout
    and stderr lines as they come, a bar redrawn in place echoed once, no ipykernel TCP warning."""
    import nbformat

    from tools.run_course import execute

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# tiny"),
        nbformat.v4.new_code_cell("print('loaded')"),
        nbformat.v4.new_code_cell("import sys\nfor i in range(50):\n    print(f'\\rbar {i}/50', end='', file=sys.stderr)\n"
                                  "print('\\nstep 3: loss 0.5', file=sys.stderr)"),
        nbformat.v4.new_code_cell(""),
        nbformat.v4.new_code_cell("x = 1"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "01_tiny.ipynb")
    lines = []
    seconds = execute(tmp_path / "01_tiny.ipynb", tmp_path / "executed", timeout=120, echo=lines.append)
    cells = [line for line in lines if line.startswith("01_tiny: cell ")]
    assert [c.split(" (")[0] for c in cells] == ["01_tiny: cell 1/3", "01_tiny: cell 2/3", "01_tiny: cell 3/3"]
    assert all(c.endswith("s)") for c in cells)
    assert "  loaded" in lines and "  step 3: loss 0.5" in lines
    bars = [line for line in lines if "bar" in line]  # redrawn 50 times: its latest state, once
    assert len(bars) == 1 and bars[0].startswith("  bar ") and bars[0].endswith("/50"), bars
    assert (tmp_path / "executed" / "01_tiny.ipynb").is_file() and seconds > 0
    captured = capfd.readouterr()
    assert "without encryption" not in captured.out + captured.err
