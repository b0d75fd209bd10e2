"""Tests of course_utils.metrics (kill-safe JSONL/CSV history, resume, progress bar) and
course_utils.plots (PNG learning curves robust to missing data)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from course_utils.metrics import GRPO_FIELDS, MetricsLogger, progress, read_metrics
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


# --- MetricsLogger ----------------------------------------------------------------------------


def test_log_writes_jsonl_and_csv_each_step(tmp_path):
    logger = MetricsLogger(tmp_path, "grpo")
    assert logger.path == tmp_path / "metrics_grpo.jsonl" and logger.csv_path == tmp_path / "metrics_grpo.csv"
    for step in (1, 2):
        row = logger.log(_grpo_row(step))
        # On disk right away, without closing anything.
        on_disk = read_metrics(logger.path)
        assert len(on_disk) == step and on_disk[-1] == row
    assert row["weight_correctness"] == pytest.approx(0.53) and "weight" not in row  # flattened
    assert list(row)[0] == "step" and isinstance(row["time"], float)
    csv_rows = _csv_rows(logger.csv_path)
    assert [int(r["step"]) for r in csv_rows] == [1, 2]
    assert float(csv_rows[1]["reward_mean"]) == pytest.approx(0.2) and csv_rows[1]["phase"] == "easy"
    assert logger.last_step == 2 and len(logger) == 2


def test_values_are_converted_and_columns_may_grow(tmp_path):
    import jax.numpy as jnp

    logger = MetricsLogger(tmp_path, "sft")
    logger.log({"loss": np.float32(2.5), "lr": jnp.asarray(1e-4)}, step=np.int64(1).item())
    logger.log({"loss": jnp.asarray([1.5]), "grad_norm": 0.3, "tokens": np.arange(2)}, step=2)
    rows = read_metrics(logger.path)
    assert rows[0]["loss"] == 2.5 and rows[0]["lr"] == pytest.approx(1e-4)
    assert rows[1] == {**rows[1], "loss": 1.5, "grad_norm": 0.3, "tokens": [0, 1]}
    csv_rows = _csv_rows(logger.csv_path)
    assert list(csv_rows[0])[:4] == ["step", "loss", "lr", "time"] and "grad_norm" in csv_rows[0]
    assert csv_rows[0]["grad_norm"] == "" and csv_rows[1]["grad_norm"] == "0.3"
    assert json.loads(csv_rows[1]["tokens"]) == [0, 1]


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="stage"):
        MetricsLogger(tmp_path, "../grpo")
    logger = MetricsLogger(tmp_path, "grpo")
    with pytest.raises(ValueError, match="integer step"):
        logger.log({"reward_mean": 0.5})
    with pytest.raises(ValueError, match="integer step"):
        logger.log({"step": 1.5})
    with pytest.raises(ValueError, match="differs"):
        logger.log({"step": 1}, step=2)
    with pytest.raises(FileNotFoundError, match="(?i)part 06"):
        read_metrics(tmp_path / "missing.jsonl")
    assert read_metrics(logger.path) == []


def test_resume_drops_rows_after_the_checkpoint_and_history_continues(tmp_path):
    logger = MetricsLogger(tmp_path, "grpo")
    for step in range(1, 8):
        logger.log(_grpo_row(step))
    # A new session restores the checkpoint of step 4: rows 5-7 will be recomputed.
    resumed = MetricsLogger(tmp_path, "grpo")
    assert resumed.last_step == 7
    assert resumed.resume(4) == 3
    for step in range(5, 10):
        resumed.log(_grpo_row(step))
    steps = [r["step"] for r in read_metrics(resumed.path)]
    assert steps == list(range(1, 10))
    assert [int(r["step"]) for r in _csv_rows(resumed.csv_path)] == steps
    assert resumed.resume(9) == 0
    assert resumed.resume(0) == 9 and read_metrics(resumed.path) == []


def test_logging_an_old_step_without_resume_replaces_instead_of_duplicating(tmp_path):
    logger = MetricsLogger(tmp_path, "grpo")
    for step in range(1, 6):
        logger.log(_grpo_row(step))
    with pytest.warns(UserWarning, match="already logged"):
        logger.log({**_grpo_row(3), "reward_mean": -1.0})
    rows = read_metrics(logger.path)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["reward_mean"] == -1.0
    assert [int(r["step"]) for r in _csv_rows(logger.csv_path)] == [1, 2, 3]
    with pytest.warns(UserWarning):
        logger.log({"step": 0, "kl": 0.5})  # even step 0 again
    assert [r["step"] for r in read_metrics(logger.path)] == [0]
    assert b"\r" not in logger.csv_path.read_bytes()


def test_truncated_last_line_is_ignored_and_repaired(tmp_path):
    logger = MetricsLogger(tmp_path, "grpo")
    for step in (1, 2):
        logger.log(_grpo_row(step))
    with open(logger.path, "a") as f:  # what a kill in the middle of a write leaves
        f.write(json.dumps(_grpo_row(3))[:40])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cut last line is expected: no warning
        assert [r["step"] for r in read_metrics(logger.path)] == [1, 2]
    reopened = MetricsLogger(tmp_path, "grpo")
    reopened.log(_grpo_row(3))
    assert [r["step"] for r in read_metrics(logger.path)] == [1, 2, 3]
    assert logger.path.read_text().count("\n") == 3


def test_corrupt_middle_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "metrics_grpo.jsonl"
    path.write_text('{"step": 1, "kl": 0.1}\nnot json\n[1, 2]\n{"step": 2, "kl": 0.2}\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = read_metrics(path)
    assert sorted(str(w.message).split(": ")[1] for w in caught) == [
        "line 2 is not valid JSON; skipped.", "line 3 is not a JSON object; skipped."]
    assert [r["step"] for r in rows] == [1, 2]
    with pytest.warns(UserWarning):
        logger = MetricsLogger(tmp_path, "grpo")
    logger.log({"step": 3, "kl": 0.3})
    assert path.read_text().splitlines()[1] == json.dumps({"step": 2, "kl": 0.2})  # file rewritten clean
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]


_LOG_FOREVER = """
import sys
from course_utils.metrics import MetricsLogger
logger = MetricsLogger(sys.argv[1], "grpo")
step = 0
while True:
    step += 1
    logger.log({"step": step, "reward_mean": step / 1000, "padding": "x" * 2000})
    print(step, flush=True)
"""


def test_kill_9_loses_at_most_the_step_in_flight(tmp_path):
    script = tmp_path / "logger.py"
    script.write_text(textwrap.dedent(_LOG_FOREVER))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        confirmed = 0
        for line in proc.stdout:
            confirmed = int(line)
            if confirmed >= 200:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert confirmed >= 200, "the logging subprocess died early"
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics_grpo.jsonl")]
    assert steps == list(range(1, len(steps) + 1))  # contiguous, no hole, no duplicate
    assert len(steps) >= confirmed  # every step whose log() returned is on disk
    logger = MetricsLogger(tmp_path, "grpo")  # the CSV is rebuilt to match
    assert len(_csv_rows(logger.csv_path)) == len(steps)
    logger.log({"step": len(steps) + 1})
    assert read_metrics(logger.path)[-1]["step"] == len(steps) + 1


# --- progress -----------------------------------------------------------------------------------


def test_progress_shows_metrics_and_eta(tmp_path):
    out = io.StringIO()
    with progress(10, "GRPO", initial=4, file=out, mininterval=0) as bar:
        assert bar.n == 4
        bar.update(1)
        bar.update_metrics({"step": 5, "reward_mean": 0.41234, "kl": np.float32(0.002), "phase": "easy"})
        bar.update_metrics({"reward_mean": 0.5, "kl": 0.1}, keys=["kl"])
        assert bar.postfix == "kl=0.1"
    text = out.getvalue()
    assert "GRPO" in text and "5/10" in text and "reward_mean=0.4123" in text and "phase=easy" in text
    assert "<" in text  # tqdm's "elapsed<remaining" ETA


def test_field_documentation_covers_the_issue_fields():
    for name in ("step", "phase", "reward_mean", "reward_std", "zero_advantage_frac", "kl", "policy_loss",
                 "completion_length_mean", "truncation_rate", "learning_rate", "seconds_per_step"):
        assert name in GRPO_FIELDS


# --- plots --------------------------------------------------------------------------------------


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_training_curves_png_from_a_metrics_file(tmp_path):
    logger = MetricsLogger(tmp_path, "grpo")
    for step in range(1, 13):
        logger.log(_grpo_row(step))
    out = plot_training_curves(logger.path, tmp_path / "plots" / "grpo.png")
    assert out == tmp_path / "plots" / "grpo.png" and _png_size(out) == (1200, 800)
    assert not list(out.parent.glob(".*"))  # no temp file left

    fig = _training_figure(read_metrics(logger.path), None)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == ["Loss", "Reward", "Trace score (format + coherence)", "Reward weights"]
    loss, reward, trace, weights = fig.axes[:4]
    assert "no data" not in _texts(fig)
    assert {l.get_label() for l in reward.lines} >= {"total", "format", "coherence", "correctness"}
    assert {l.get_label() for l in weights.lines} >= {"format", "coherence", "correctness", "efficiency"}
    assert "trace score (weighted mean)" in {l.get_label() for l in trace.lines}
    total = next(l for l in reward.lines if l.get_label() == "total")
    assert list(total.get_xdata()) == list(range(1, 13))
    # Phase changes (easy → medium at 5, medium → hard at 9) are marked and labelled.
    assert sorted(l.get_xdata()[0] for l in weights.lines if l.get_linestyle() == ":") == [5, 9]
    assert {"easy", "medium", "hard"} <= set(_texts(fig))
    assert any(ax.get_ylabel() == "KL" for ax in fig.axes)


def test_training_curves_with_no_rows_one_row_and_missing_fields(tmp_path):
    fig = _training_figure(_rows([]), None)
    assert _texts(fig).count("no data") == 4 and "no data" in fig.get_suptitle()
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
    assert {"loss", "loss (smoothed)", "learning rate"} <= labels
    smoothed = next(l for l in fig.axes[0].lines if l.get_label() == "loss (smoothed)")
    assert smoothed.get_ydata()[-1] > rows[-1]["loss"]  # an EMA of a falling curve lags above it
    assert _texts(_sft_figure([], None)) == ["no data"]
    assert _png_size(plot_sft_loss([], tmp_path / "sft_empty.png")) == (800, 450)
