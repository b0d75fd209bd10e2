"""Tests of course_utils.metrics (the Tunix logging backend writing kill-safe JSONL/CSV rows,
resume) and course_utils.plots (PNG learning curves robust to missing data)."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from course_utils.metrics import StepMetrics, read_metrics
from course_utils.plots import _rows, _sft_figure, _training_figure, plot_sft_loss, plot_training_curves

REPO = Path(__file__).resolve().parent.parent


def _grpo_row(step: int) -> dict:
    phase = "easy" if step <= 4 else "medium" if step <= 8 else "hard"
    return {
        "step": step,
        "phase": phase,
        "reward_mean": 0.1 * step,
        "reward_std": 0.05,
        "reward_format_mean": min(1.0, 0.2 * step),
        "reward_coherence_mean": 0.5,
        "reward_correctness_mean": 0.05 * step,
        "zero_advantage_frac": 0.25,
        "kl": 0.001 * step,
        "policy_loss": 0.01 * (-1) ** step,
        "completion_length_mean": 60.0 + step,
        "truncation_rate": 0.0,
        "learning_rate": 3e-5,
        "weight": {"format": 0.25, "coherence": 0.2, "correctness": 0.55 - 0.01 * step, "efficiency": 0.01 * step},
        "seconds_per_step": 10.0,
    }


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- StepMetrics --------------------------------------------------------------------------------


def _log_rows(run_dir: Path, steps) -> StepMetrics:
    metrics = StepMetrics(run_dir, "grpo")
    for step in steps:
        metrics.log(step, {k: v for k, v in _grpo_row(step).items() if k != "step"})
    return metrics


def test_tunix_logs_through_the_backend_into_one_row_per_step(tmp_path):
    """Plugged into Tunix's own MetricsLogger (what its trainers log through): each update is
    paired with the rollouts it learned from (rollout metrics come at the 0-based batch index,
    the loss at the 1-based step), Tunix's duplicates and JAX internals are ignored."""
    from tunix.sft import metrics_logger

    metrics = StepMetrics(tmp_path, "grpo", lambda step: {"phase": "x"})
    tunix = metrics_logger.MetricsLogger(metrics.options())
    try:
        for batch in range(3):
            tunix.log("course", "reward_mean", 0.1 * batch, "train", batch)
            tunix.log("completions", "mean_length", np.float32(10 + batch), "train", batch)
            tunix.log("actor", "loss", np.asarray([1.0 + batch]), "train", batch + 1)
            tunix.log("", "loss", 99.0, "train", batch + 1)  # the trainer's duplicate: not a GRPO source
            tunix.log("actor", "loss", 5.0, "eval", batch + 1)  # not training
    finally:
        tunix.close()
    rows = read_metrics(metrics.path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for batch, row in enumerate(rows):
        assert row["reward_mean"] == pytest.approx(0.1 * batch) and row["completion_length_mean"] == 10 + batch
        assert row["policy_loss"] == 1.0 + batch and row["phase"] == "x" and row["stage"] == "grpo"
        assert "loss" not in row
    assert [int(r["step"]) for r in _csv_rows(metrics.csv_path)] == [1, 2, 3]
    assert list((tmp_path / "tensorboard" / "grpo").iterdir())  # Tunix's TensorBoard backend too


def test_rows_wait_for_late_events_and_a_checkpoint_flushes_them():
    """Rows wait for two later steps (late events); a checkpoint of step s flushes them up to s.
    The kill after a real checkpoint is tests/test_rehearsal.py's."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        metrics = StepMetrics(folder, "grpo")
        for batch in range(2):
            metrics.log_scalar("course/train/reward_mean", 0.5, step=batch)
            metrics.log_scalar("actor/train/loss", 1.0, step=batch + 1)
        assert metrics.rows == []  # held back: step 2's events may still come
        metrics.flush(1)
        assert [r["step"] for r in metrics.rows] == [1]
        metrics.flush(2)
        metrics.close()
        assert [r["step"] for r in read_metrics(metrics.path)] == [1, 2]


def test_rows_are_on_disk_at_once_flattened_and_mirrored_to_csv(tmp_path):
    import jax.numpy as jnp

    metrics = _log_rows(tmp_path, (1, 2))
    rows = read_metrics(metrics.path)
    assert rows == metrics.rows and list(rows[0])[0] == "step" and isinstance(rows[0]["time"], float)
    assert rows[1]["weight_correctness"] == pytest.approx(0.53) and "weight" not in rows[1]  # flattened
    metrics.log(3, {"loss": np.float32(2.5), "lr": jnp.asarray(1e-4)})
    assert read_metrics(metrics.path)[-1]["loss"] == 2.5
    csv_rows = _csv_rows(metrics.csv_path)
    assert [int(r["step"]) for r in csv_rows] == [1, 2, 3] and csv_rows[1]["phase"] == "easy"
    assert csv_rows[0]["loss"] == "" and float(csv_rows[2]["lr"]) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="stage"):
        StepMetrics(tmp_path, "../grpo")
    with pytest.raises(FileNotFoundError, match="(?i)part 06"):
        read_metrics(tmp_path / "missing.jsonl")


def test_resume_drops_rows_after_the_checkpoint_and_history_continues(tmp_path):
    _log_rows(tmp_path, range(1, 8))
    resumed = StepMetrics(tmp_path, "grpo")  # a new session restores the checkpoint of step 4
    assert resumed.last_step == 7
    resumed.resume(4)
    for step in range(5, 10):
        resumed.log_scalar("actor/train/loss", 0.5, step=step)
    resumed.close()
    steps = [r["step"] for r in read_metrics(resumed.path)]
    assert steps == list(range(1, 10))
    assert [int(r["step"]) for r in _csv_rows(resumed.csv_path)] == steps
    resumed.log_scalar("actor/train/loss", 0.5, step=3)  # a step already written is never written twice
    resumed.close()
    assert [r["step"] for r in read_metrics(resumed.path)] == steps
    resumed.resume(0)
    assert read_metrics(resumed.path) == [] and _csv_rows(resumed.csv_path) == []


def test_a_corrupt_line_is_warned_about_and_skipped(tmp_path):
    path = tmp_path / "other.jsonl"
    path.write_text('{"step": 1, "kl": 0.1}\nnot json\n[1, 2]\n{"step": 2, "kl": 0.2}\n')
    with pytest.warns(UserWarning, match="line 2 is not valid JSON"):
        assert [r["step"] for r in read_metrics(path)] == [1, 2]


_LOG_FOREVER = """
import sys
from course_utils.metrics import StepMetrics
metrics = StepMetrics(sys.argv[1], "grpo")
metrics.resume(0)
step = 0
while True:
    step += 1
    metrics.log_scalar("actor/train/loss", step / 1000, step=step)
    metrics.log_scalar("course/train/padding", 0.0, step=step - 1)
    metrics.flush(step)  # as a checkpoint of this step does
    print(step, flush=True)
"""


def test_kill_9_loses_no_flushed_step(tmp_path):
    script = tmp_path / "logger.py"
    script.write_text(textwrap.dedent(_LOG_FOREVER))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)})
    try:
        confirmed = 0
        for line in proc.stdout:
            confirmed = int(line)
            if confirmed >= 100:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert confirmed >= 100, "the logging subprocess died early"
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics_grpo.jsonl")]
    assert steps == list(range(1, len(steps) + 1))  # contiguous, no hole, no duplicate
    assert len(steps) >= confirmed  # every step whose flush returned is on disk
    metrics = StepMetrics(tmp_path, "grpo")
    metrics.resume(len(steps))  # the CSV is rebuilt to match
    assert len(_csv_rows(metrics.csv_path)) == len(steps)


# --- plots --------------------------------------------------------------------------------------


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_training_curves_png_from_a_metrics_file(tmp_path):
    logger = _log_rows(tmp_path, range(1, 13))
    out = plot_training_curves(logger.path, tmp_path / "plots" / "grpo.png")
    assert out == tmp_path / "plots" / "grpo.png" and _png_size(out) == (1200, 800)
    assert not list(out.parent.glob(".*"))  # no temp file left

    fig = _training_figure(read_metrics(logger.path), None)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == ["Loss", "Reward", "KL to the reference", "Reward weights"]
    loss, reward, kl, weights = fig.axes[:4]
    assert "no data" not in _texts(fig)
    assert {l.get_label() for l in reward.lines} >= {"total", "format", "coherence", "correctness"}
    assert {l.get_label() for l in weights.lines} >= {"format", "coherence", "correctness", "efficiency"}
    total = next(l for l in reward.lines if l.get_label() == "total")
    assert list(total.get_xdata()) == list(range(1, 13))
    # Phase changes (easy → medium at 5, medium → hard at 9) are marked and labelled.
    assert sorted(l.get_xdata()[0] for l in weights.lines if l.get_linestyle() == ":") == [5, 9]
    assert {"easy", "medium", "hard"} <= set(_texts(fig))
    assert any(ax.get_ylabel() == "KL" for ax in fig.axes)


def test_training_curves_with_no_rows_one_row_and_missing_fields(tmp_path):
    fig = _training_figure(_rows([]), None)
    assert _texts(fig).count("no data") == 4
    assert _png_size(plot_training_curves([], tmp_path / "empty.png")) == (1200, 800)

    one = [_grpo_row(1)]
    fig = _training_figure(_rows(one), "one step")
    assert "no data" not in _texts(fig) and fig.get_suptitle() == "one step"
    total = next(l for l in fig.axes[1].lines if l.get_label() == "total")
    assert total.get_marker() == "o"  # a single point stays visible
    plot_training_curves(one, tmp_path / "one.png")

    # Only rewards logged, with a NaN and a None among them: other panels say so.
    partial = [{"step": 1, "reward_mean": 0.2}, {"step": 2, "reward_mean": float("nan")},
               {"step": 3, "reward_mean": None, "kl": "n/a"}, {"reward_mean": 0.4}]
    fig = _training_figure(_rows(partial), None)
    assert _texts(fig).count("no data") == 3
    total = next(l for l in fig.axes[1].lines if l.get_label() == "total")
    assert list(total.get_xdata()) == [1, 3]  # a row without step is placed at its index
    assert not any(math.isnan(v) for v in total.get_ydata())
    plot_training_curves(partial, tmp_path / "partial.png")
    with pytest.raises(TypeError, match="list of dicts"):
        plot_training_curves([1, 2], tmp_path / "bad.png")


def test_sft_loss_plot(tmp_path):
    rows = [{"step": s, "loss": 3.0 * math.exp(-s / 10), "learning_rate": 2e-4 * min(1, s / 5)} for s in range(1, 31)]
    out = plot_sft_loss(rows, tmp_path / "sft.png")
    assert _png_size(out) == (800, 450)
    fig = _sft_figure(rows, None)
    labels = {l.get_label() for ax in fig.axes for l in ax.lines}
    assert {"loss", "loss (smoothed)"} <= labels
    smoothed = next(l for l in fig.axes[0].lines if l.get_label() == "loss (smoothed)")
    assert smoothed.get_ydata()[-1] > rows[-1]["loss"]  # an EMA of a falling curve lags above it
    assert _texts(_sft_figure([], None)) == ["no data"]
    assert _png_size(plot_sft_loss([], tmp_path / "sft_empty.png")) == (800, 450)
