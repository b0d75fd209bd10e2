"""tools.proof: the whole before/after proof with a control, on the smoke profile (part 06)."""

import json

import numpy as np
import pytest

from tools import proof


def test_set_values_are_read_as_json_or_kept_as_text():
    assert proof.parse_sets(["filter_difficulties=easy,medium", "beta=0", "filter_prompts=true", "control=null"]) == {
        "filter_difficulties": "easy,medium", "beta": 0, "filter_prompts": True, "control": None}
    with pytest.raises(ValueError, match="field=value"):
        proof.parse_sets(["beta"])
    config = proof.proof_config("smoke", k=4, train_candidates=6, grpo_steps=3, sets={"beta": 0.0})
    assert (config.filter_prompts, config.filter_samples_k, config.filter_candidates, config.max_steps, config.beta) == (
        True, 4, 6, 3, 0.0)


def _lora(path):
    import orbax.checkpoint as ocp
    import jax

    checkpointer = ocp.StandardCheckpointer()
    try:
        return [np.asarray(x) for x in jax.tree.leaves(checkpointer.restore(path.resolve()))]
    finally:
        checkpointer.close()


@pytest.mark.slow
def test_the_proof_runs_every_stage_and_resumes_without_redoing_them(tmp_path, capsys, monkeypatch):
    from course_utils.evaluation import find_checkpoint

    monkeypatch.chdir(tmp_path)  # a relative --run-dir, as the README writes it (Orbax wants absolute paths)
    run = tmp_path / "proof"
    argv = ["--profile", "smoke", "--run-dir", "proof", "--k", "2", "--train-candidates", "3",
            "--heldout-candidates", "2", "--grpo-steps", "2", "--eval-examples", "4",
            "--set", "filter_pass_rate_min=0.0", "--set", "eval_batch_size=4", "--set", "checkpoint_every=1"]
    assert proof.main(argv) == 0
    result = json.loads((run / "proof.json").read_text())
    assert result["stages_done"] == ["sft", "filter", "grpo", "after", "control", "greedy"]
    assert result["candidates"]["train"]["prompts"] == 3 and result["candidates"]["heldout"]["prompts"] == 2
    gains = {row["comparison"]: row for row in result["gains"]}
    assert gains["train: GRPO after − before"]["n"] == 3 and gains["heldout: control (lr0) after − before"]["n"] == 2
    assert "heldout: GRPO after − control after" in gains
    assert set(result["greedy"]["metrics"]) == {"format", "strict", "truncated"} and result["greedy"]["problems"] == 4
    table = (run / "proof.md").read_text()
    assert "| train: GRPO after − before | 3 |" in table and "Greedy regression check (4 test problems)" in table
    assert (run / "signal_curves.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (run / "metrics_grpo.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(0 <= r["mixed_group_frac"] <= 1 for r in rows)
    # The control trained with learning rate 0: its LoRA weights are still the SFT ones; GRPO's moved.
    sft = _lora(find_checkpoint(run, "sft", search_kaggle_inputs=False).path)
    control = _lora(find_checkpoint(run / "control-lr0", "grpo", search_kaggle_inputs=False).path)
    grpo = _lora(find_checkpoint(run, "grpo", search_kaggle_inputs=False).path)
    assert all(np.array_equal(a, b) for a, b in zip(sft, control))
    assert not all(np.array_equal(a, b) for a, b in zip(sft, grpo))
    # The second run finds every stage done: nothing sampled or trained again, the same report.
    caches = {p.name: p.read_text() for p in (run / "pass_rates").iterdir()}
    capsys.readouterr()
    assert proof.main(argv) == 0
    out = capsys.readouterr().out
    assert "sampling" not in out and {p.name: p.read_text() for p in (run / "pass_rates").iterdir()} == caches
    assert json.loads((run / "proof.json").read_text())["gains"] == result["gains"]
