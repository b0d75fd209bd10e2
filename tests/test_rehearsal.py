"""The tpu profile's code path on 8 simulated CPU devices (issue 12): the mesh the course picks
for a model with Gemma 3 1B's heads, weights placed on it, LoRA, SFT and GRPO through
`course_utils.training.main`, a real SIGKILL after a GRPO checkpoint, and a resume that finishes.
The old fixed (1, 8) mesh could not even place the weights (4 query heads do not split 8 ways)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_utils import training

SCRIPT = Path(__file__).resolve().parent / "rehearsal_run.py"


def _train(run: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "COURSE_RUN_DIR": str(run), "COURSE_SKIP_DEVICE_CHECK": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), "train", *args], env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_tpu_path_on_eight_simulated_devices_trains_is_killed_and_resumes(tmp_path):
    run = tmp_path / "run"
    killed = _train(run, "--kill-after-grpo-checkpoint", "2")
    out = killed.stdout + killed.stderr
    assert "8 devices, mesh (2, 4)" in out, out[-3000:]
    assert killed.returncode == -9, out[-3000:]  # SIGKILL, right after GRPO's checkpoint 2
    assert "sft: steps 0→2 of 2" in out
    assert training.latest_stage_checkpoint(run, "grpo").step == 2

    resumed = _train(run)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-4000:]
    assert "sft: steps 2→2 of 2" in out and "grpo: steps 2→4 of 4" in out
    final = training.latest_stage_checkpoint(run, "grpo")
    assert final.step == 4 and final.stage == "grpo" and final.sidecar["config"]["profile"] == "tpu"
