"""The tpu profile's code path on 8 simulated CPU devices (issue 12): the mesh the course picks
for a model with Gemma 3 1B's heads, weights placed on it, LoRA, SFT and GRPO through
`tools.train.main`, a real SIGKILL after a GRPO checkpoint, a resume that finishes,
then (in the same process) generation, part 07's evaluation, part 08's exports loaded back, and
a tiny model in the layout of Kaggle's Gemma 3 Flax checkpoint loaded onto the mesh; a second
process with one device recomputes what must not depend on the mesh.
The old fixed (1, 8) mesh could not even place the weights (4 query heads do not split 8 ways)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from course_utils import training

SCRIPT = Path(__file__).resolve().parent / "rehearsal_run.py"


def _rehearse(run: Path, *args: str, devices: int = 8) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", COURSE_RUN_DIR=str(run), COURSE_SKIP_DEVICE_CHECK="1")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=900)


def _rows(run: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (run / f"metrics_{stage}.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_tpu_path_on_eight_simulated_devices_trains_is_killed_resumes_and_matches_one_device(tmp_path):
    run = tmp_path / "run"
    killed = _rehearse(run, "train", "--kill-after-grpo-checkpoint", "2")
    out = killed.stdout + killed.stderr
    assert "8 devices, mesh (2, 4)" in out, out[-3000:]
    assert killed.returncode == -9, out[-3000:]  # SIGKILL, right after GRPO's checkpoint 2
    assert "sft: steps 0→2 of 2" in out
    assert training.latest_stage_checkpoint(run, "grpo").step == 2
    # The rows of the steps a checkpoint covers are on disk when it is saved (Tunix holds each
    # step's metrics back until the next step: they used to die with the process).
    assert [r["step"] for r in _rows(run, "grpo")] == [1, 2]
    assert [r["step"] for r in _rows(run, "sft")] == [1, 2]

    resumed = _rehearse(run, "train", "--then-check")
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-4000:]
    assert "sft: steps 2→2 of 2" in out and "grpo: steps 2→4 of 4" in out
    final = training.latest_stage_checkpoint(run, "grpo")
    assert final.step == 4 and final.stage == "grpo" and final.sidecar["config"]["profile"] == "tpu"
    grpo_rows = _rows(run, "grpo")
    assert [r["step"] for r in grpo_rows] == [1, 2, 3, 4]  # each step exactly once across the kill
    assert [int(r["batch_index"]) for r in grpo_rows] == [0, 1, 2, 3] and all("policy_loss" in r for r in grpo_rows)

    single = _rehearse(run, "check", devices=1)
    assert single.returncode == 0, (single.stdout + single.stderr)[-4000:]
    eight, one = (json.loads((run / "rehearsal" / f"{n}.json").read_text()) for n in (8, 1))
    arrays8, arrays1 = (np.load(run / "rehearsal" / f"{n}.npz") for n in (8, 1))
    assert eight["mesh"] == [2, 4] and one["mesh"] == [1, 1]

    # What must not depend on the mesh equals the one-device run's, to float tolerance.
    logged = _rows(run, "sft")[0]["loss"]  # Tunix's first SFT step, sharded over (2, 4)
    assert logged == pytest.approx(one["sft_first_loss"], rel=1e-5)
    assert eight["sft_first_loss"] == pytest.approx(one["sft_first_loss"], rel=1e-5)
    scale = np.abs(arrays1["logits"]).max()
    np.testing.assert_allclose(arrays8["logits"], arrays1["logits"], rtol=0, atol=1e-4 * scale)
    assert eight["greedy_tokens"] == one["greedy_tokens"] and eight["greedy_replies"] == one["greedy_replies"]
    assert all(len(t) >= 1 for t in eight["greedy_tokens"])

    # Part 07's evaluation on the mesh: greedy on the test problems, k samples on the first ones.
    evaluation = eight["evaluation"]
    assert evaluation["rows"] == 4 and evaluation["settings"] == {"examples": 4, "k": 2, "sampled_examples": 2}
    assert {"strict", "reward", "pass_at_k", "maj_at_k"} <= set(evaluation["metrics"])
    assert evaluation["greedy_replies"] == eight["greedy_replies"]  # the same greedy decoding

    # Part 08's exports, each loaded back and run on the same tokens as the trained model.
    assert set(eight["exports"]) == {"hf", "tunix_lora"}
    logits = arrays8["logits"]
    assert np.abs(arrays8["wiped_lora_logits"] - logits).max() > 1e-3 * scale  # GRPO moved the LoRA weights
    np.testing.assert_allclose(arrays8["tunix_lora_logits"], logits, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(arrays8["tunix_hf_logits"], logits, rtol=0, atol=1e-4 * scale)  # hf/ in Tunix
    np.testing.assert_allclose(arrays8["hf_logits"], logits, rtol=0, atol=1e-4 * scale)  # transformers, float32

    # A tiny model in Kaggle's Gemma 3 Flax checkpoint layout, through the course's loader,
    # onto the (2, 4) mesh: every weight as written, each spread over the 8 devices.
    flax_layout = eight["kaggle_flax"]
    assert flax_layout["weights"] == 26 and flax_layout["mismatched"] == []
    assert flax_layout["device_counts"] == [8] and "Orbax checkpoint" in flax_layout["source"]
    assert flax_layout["embedding_spec"] != "P()"
