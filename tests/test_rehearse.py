"""tools.rehearse (issue 12): the full-size rehearsal's command, run here on the tiny model
(same code path: 8 simulated devices in a subprocess, the course's mesh, LoRA, Tunix's own train
step compiled from abstract shapes, then executed at cut lengths)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _rehearse(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("COURSE_REHEARSE_CHILD", None)
    env.pop("XLA_FLAGS", None)  # the command sets the device count itself
    return subprocess.run([sys.executable, "-m", "tools.rehearse", "--model", "tiny", *args],
                          env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.mark.slow
def test_rehearsal_compiles_runs_and_reports_per_device_figures(tmp_path):
    out = tmp_path / "figures.json"
    done = _rehearse("--json", str(out), "--exec-prompt-length", "8", "--exec-generation-length", "8",
                     "--exec-sft-length", "16")
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert "8 simulated CPU devices, mesh (fsdp, tp) = (2, 4)" in text
    assert "compiled at full size, not run" in text and "executed at cut lengths" in text
    assert "rehearse: fits" in text
    figures = json.loads(out.read_text())
    assert figures["mesh"] == [2, 4]
    for update in figures["compiled"] + figures["executed"]:
        # XLA's arguments are the parameters, optimiser state and batch counted from the shardings
        counted = update["base"] + update["lora"] + update["optimizer"] + update["inputs"]
        assert update["argument"] == pytest.approx(counted, rel=0.02)
        assert update["temp"] > 0 and update["peak"] > update["argument"]
    full_grpo, cut_grpo = figures["compiled"][1], figures["executed"][1]
    assert full_grpo["temp"] > cut_grpo["temp"]  # 256 + 512 tokens need more than 8 + 8
    assert all(u["lora_changed"] > 0 and u["loss"] == u["loss"] for u in figures["executed"])


@pytest.mark.slow
def test_rehearsal_fails_clearly_when_the_figures_do_not_fit():
    done = _rehearse("--compile-only", "--device-gib", "0.05")
    assert done.returncode == 1
    assert "DOES NOT FIT" in done.stderr and "of a 0 GiB chip" not in done.stderr
    assert "--micro-batch" in done.stderr
