"""run_course's per-part peak memory: the kernel's high-water mark, not the job's own."""

import subprocess
import sys

from course_utils.run_course import PeakMemory, peak_rss_bytes


def test_peak_memory_sees_a_child_that_allocates_and_frees():
    # The child touches 400 MB, frees it and lingers: only a high-water mark (or a poll during the
    # allocation) sees it, the child's RSS at the end does not.
    code = "import time; b = bytearray(400 * 2**20); time.sleep(1.0); del b; time.sleep(1.0)"
    with PeakMemory(interval=0.1) as memory:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert memory.peak >= 400 * 2**20
    assert memory.gib < 4  # the child's, not a sum over the machine


def test_peak_rss_of_a_missing_process_is_zero():
    assert peak_rss_bytes(2**22 + 12345) == 0
