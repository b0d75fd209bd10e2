"""Per-step training metrics as JSONL + CSV that survive a killed session, and a progress bar (part 06).

`MetricsLogger(run_dir, "grpo")` appends one JSON object per step to `run_dir/metrics_grpo.jsonl`
(the source of truth) and mirrors it to `run_dir/metrics_grpo.csv` for spreadsheets. Each row is
flushed and fsync'ed when it is logged, so a killed process loses at most the step in flight.
After resuming from a checkpoint, `logger.resume(checkpoint_step)` drops the rows logged after
that checkpoint, so the history continues without a duplicated or missing step:

>>> logger = MetricsLogger(run_dir, "grpo")                          # doctest: +SKIP
>>> logger.resume(info.step if info else 0)                          # doctest: +SKIP
>>> logger.log({"step": 11, "reward_mean": 0.42, "kl": 0.003})       # doctest: +SKIP

TensorBoard: Tunix logs its own scalars when its `TrainingConfig` / `RLTrainingConfig` gets
`metrics_logging_options=MetricsLoggerOptions(log_dir=str(run_dir / "tensorboard"))`
(`tunix.sft.metrics_logger`). Its TensorBoard backend writes event files straight into that
`log_dir`, named `<prefix>/<mode>/<metric>` — PeftTrainer: `train/loss`, `train/perplexity`,
`train/learning_rate`; GRPO: `actor/train/loss`, `actor/train/kl`, `rewards/train/score/mean`,
`completions/train/mean_length`, ... — and flushes only every 100 steps (`flush_every_n_steps`)
and 30 s, or on close, so a kill can lose recent TensorBoard points; these JSONL files cannot.
View with `tensorboard --logdir <run_dir>/tensorboard`. To copy Tunix's per-step GRPO numbers
into a `MetricsLogger`, `RLCluster.with_external_metrics_logger(fn)` calls `fn` with each
`tunix.perf.metrics.MetricsBuffer` (`.global_steps`, `.metrics`: name → (values, aggregate)).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from course_utils.files import atomic_write

REWARD_COMPONENTS = ("format", "coherence", "correctness", "efficiency", "calibration")

# The row fields part 06 logs per GRPO step; the plots read these names. Unknown extra fields
# are kept as they are. Per-component fields exist for each name in REWARD_COMPONENTS.
GRPO_FIELDS: dict[str, str] = {
    "step": "optimiser step, counted from 1 (the checkpoint step after this update)",
    "phase": "curriculum phase of the step's prompts: easy | medium | hard",
    "reward_mean": "mean of the weighted total reward over the step's completions",
    "reward_std": "standard deviation of the total reward",
    "reward_<component>_mean": "mean of one reward component (before weighting)",
    "reward_<component>_std": "standard deviation of one reward component",
    "trace_score": "optional: the reasoning-trace score (format + coherence); else plots derive it",
    "zero_advantage_frac": "share of prompt groups whose G rewards all tie (no learning signal)",
    "mixed_group_frac": "share of prompt groups whose G replies are partly right, partly wrong (the correctness signal)",
    "accuracy": "share of the step's rollout replies that are correct",
    "format_rate": "share of the step's rollout replies in the exact answer format",
    "kl": "KL divergence of the policy to the reference model",
    "policy_loss": "GRPO loss of the update",
    "completion_length_mean": "mean completion length in tokens",
    "truncation_rate": "share of completions that never stopped (evaluation.is_truncated)",
    "learning_rate": "optimiser learning rate at this step",
    "weight_<component>": "reward weight of each component at this step (annealed)",
    "seconds_per_step": "wall-clock seconds of this step",
    "time": "Unix time the row was logged (added automatically)",
}
SFT_FIELDS: dict[str, str] = {
    "step": "optimiser step, counted from 1",
    "loss": "cross-entropy on the completion tokens",
    "learning_rate": "optimiser learning rate at this step",
    "seconds_per_step": "wall-clock seconds of this step",
    "time": "Unix time the row was logged (added automatically)",
}

_STAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class MetricsLogger:
    """Append-only per-step metrics for one training stage, kill-safe (part 06)."""

    def __init__(self, run_dir: str | os.PathLike, stage: str, *, fsync: bool = True) -> None:
        if not isinstance(stage, str) or not _STAGE.match(stage):
            raise ValueError(
                f"stage={stage!r} is not allowed: use a short name of letters, digits, '_', '-' "
                "or '.', e.g. 'sft' or 'grpo' (it becomes part of a file name)."
            )
        self.run_dir = Path(run_dir)
        self.stage = stage
        self.path = self.run_dir / f"metrics_{stage}.jsonl"
        self.csv_path = self.run_dir / f"metrics_{stage}.csv"
        self.fsync = fsync
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._rows: list[dict[str, Any]] = []
        self._columns: list[str] = []
        if self.path.exists():
            rows = [r for r in read_metrics(self.path) if _valid_step(r.get("step"))]
            if _needs_repair(self.path, len(rows)):
                atomic_write(self.path, "".join(_json_line(r) for r in rows))
            self._rows = rows
        else:
            self.path.touch()  # so read_metrics(logger.path) works before the first step
        self._columns = _columns(self._rows)
        self._write_csv()  # the JSONL is the truth; a CSV cut by a kill is rebuilt from it

    # --- reading -----------------------------------------------------------------------------
    @property
    def rows(self) -> list[dict[str, Any]]:
        """The history so far (a copy), oldest step first."""
        return [dict(r) for r in self._rows]

    @property
    def last_step(self) -> int | None:
        return self._rows[-1]["step"] if self._rows else None

    def __len__(self) -> int:
        return len(self._rows)

    # --- writing -----------------------------------------------------------------------------
    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, Any]:
        """Append one step's metrics and flush them to disk; returns the row as written.

        `step` (argument or `metrics["step"]`) is required. Nested dicts are flattened with
        "_" (`{"weight": {"format": 0.3}}` → `weight_format`); numpy/JAX scalars become
        numbers. Logging a step at or before the last logged one (a resume without `resume()`)
        first drops the rows from that step on, with a warning, so no step appears twice.
        """
        row = flatten_metrics(metrics)
        if step is not None:
            if "step" in row and row["step"] != step:
                raise ValueError(f"step={step!r} differs from metrics['step']={row['step']!r}; pass one.")
            row["step"] = step
        if not _valid_step(row.get("step")):
            raise ValueError(
                f"metrics need an integer step >= 0 (got step={row.get('step')!r}); "
                "pass logger.log(metrics, step=step)."
            )
        row = {"step": row.pop("step"), **row}
        row.setdefault("time", round(time.time(), 3))
        if self._rows and row["step"] <= self._rows[-1]["step"]:
            warnings.warn(
                f"{self.path.name}: step {row['step']} was already logged (last step "
                f"{self._rows[-1]['step']}); dropping the rows from step {row['step']} on. Call "
                "logger.resume(checkpoint_step) after restoring a checkpoint to do this explicitly.",
                stacklevel=2,
            )
            self._drop_after(row["step"] - 1)
        line = _json_line(row)
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        self._rows.append(row)
        new_columns = [k for k in row if k not in self._columns]
        if new_columns:
            self._columns += new_columns
            self._write_csv()
        else:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, self._columns, lineterminator="\n").writerow(_csv_row(row))
                f.flush()
        return dict(row)

    def resume(self, step: int) -> int:
        """Drop the rows logged after checkpoint `step` (they will be recomputed); returns how
        many were dropped. `resume(0)` starts the history over."""
        if not _valid_step(step):
            raise ValueError(f"step={step!r} is not allowed: pass the restored checkpoint's step (an integer >= 0).")
        return self._drop_after(step)

    def _drop_after(self, step: int) -> int:
        kept = [r for r in self._rows if r["step"] <= step]
        dropped = len(self._rows) - len(kept)
        if dropped:
            self._rows = kept
            atomic_write(self.path, "".join(_json_line(r) for r in kept))
            self._columns = _columns(kept)
            self._write_csv()
        return dropped

    def _write_csv(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self._columns, lineterminator="\n")
        writer.writeheader()
        for row in self._rows:
            writer.writerow(_csv_row(row))
        atomic_write(self.csv_path, buffer.getvalue() if self._columns else "")

    def __repr__(self) -> str:
        return f"MetricsLogger({str(self.run_dir)!r}, {self.stage!r}: {len(self)} rows, last step {self.last_step})"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a metrics JSONL file, in file order (part 06).

    A last line cut short by a kill is ignored silently; any other unreadable line is skipped
    with a warning naming it. A missing file raises FileNotFoundError naming what writes it.
    """
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"No metrics at {path}. Part 06's training writes metrics_<stage>.jsonl into the run "
            "directory; run it (or check COURSE_RUN_DIR)."
        ) from None
    lines = text.split("\n")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_last = number == len(lines)  # no newline after it: possibly cut by a kill
        try:
            row = json.loads(line)
        except ValueError:
            if not is_last:
                warnings.warn(f"{path}: line {number} is not valid JSON; skipped.", stacklevel=2)
            continue
        if not isinstance(row, dict):
            warnings.warn(f"{path}: line {number} is not a JSON object; skipped.", stacklevel=2)
            continue
        rows.append(row)
    return rows


# --- progress bar -----------------------------------------------------------------------------

_PROGRESS_KEYS = ("phase", "reward_mean", "loss", "kl")


def progress(total: int, desc: str = "", *, initial: int = 0, **kwargs: Any) -> Any:
    """A tqdm bar over `total` steps with an ETA, plus `.update_metrics(row)` (part 06).

    `initial` is the step resumed from, so the rate and ETA count only this session's steps.
    `bar.update_metrics({"reward_mean": 0.41, "kl": 0.002})` shows the values after the bar
    (the same as `bar.set_postfix`); by default it shows phase, reward_mean, loss and kl when
    present (`keys=[...]` picks others). Uses the notebook widget when ipywidgets is installed, else
    the text bar. Use it as a context manager or call `.close()`.
    """
    cls = _progress_class()
    kwargs.setdefault("unit", "step")
    kwargs.setdefault("dynamic_ncols", True)
    return cls(total=total, desc=desc, initial=initial, **kwargs)


def _update_metrics(self: Any, metrics: Mapping[str, Any], keys: Iterable[str] | None = None,
                    refresh: bool = True) -> None:
    flat = flatten_metrics(metrics)
    chosen = list(keys) if keys is not None else [k for k in _PROGRESS_KEYS if k in flat]
    postfix = {}
    for key in chosen:
        if key in flat:
            value = flat[key]
            postfix[key] = f"{value:.4g}" if isinstance(value, float) else value
    self.set_postfix(postfix, refresh=refresh)


_PROGRESS_CLASSES: dict[str, type] = {}


def _progress_class() -> type:
    import importlib.util

    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm as base
    else:  # tqdm.auto would warn "IProgress not found" in notebooks and fall back anyway
        from tqdm.std import tqdm as base
    key = f"{base.__module__}.{base.__name__}"
    if key not in _PROGRESS_CLASSES:
        _PROGRESS_CLASSES[key] = type("Progress", (base,), {"update_metrics": _update_metrics})
    return _PROGRESS_CLASSES[key]


# --- helpers ------------------------------------------------------------------------------------


def _valid_step(step: Any) -> bool:
    return isinstance(step, int) and not isinstance(step, bool) and step >= 0


def _scalar(value: Any) -> Any:
    """Python value for JSON: numpy/JAX scalars and 1-element arrays → numbers, arrays → lists."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "shape") and hasattr(value, "tolist"):
        out = value.tolist()
        return out[0] if isinstance(out, list) and len(out) == 1 and not isinstance(out[0], list) else out
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_scalar(v) for v in value]
    return str(value)


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """One flat row: nested dicts joined with "_", numpy/JAX values made plain Python."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict of name → value, not {type(metrics).__name__}.")
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, prefix=f"{name}_"))
        else:
            out[name] = _scalar(value)
    return out


def _json_line(row: Mapping[str, Any]) -> str:
    return json.dumps(row, allow_nan=True, default=str) + "\n"


def _csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()}


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = ["step"] if rows else []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def _needs_repair(path: Path, good_rows: int) -> bool:
    """True when the file holds anything but `good_rows` complete lines (a cut last line,
    a corrupt line), so that appending would glue a new row onto garbage."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        return True
    return sum(1 for line in data.split(b"\n") if line.strip()) != good_rows


def is_finite_number(value: Any) -> bool:
    """True for an int/float that is not NaN or infinite (plots skip the others)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
