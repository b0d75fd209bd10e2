"""Per-step training metrics (part 06): a Tunix logging backend writing one row per step (Tunix's
and `training.grpo_step_metrics`'s numbers) to ``metrics_<stage>.jsonl`` and ``.csv``, atomically."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tunix.sft import metrics_logger

from course_utils.files import atomic_write
from course_utils.rewards import COMPONENTS as REWARD_COMPONENTS  # noqa: F401  plots' name for them

# Tunix logs rollout metrics at the 0-based batch and the trainer's at the 1-based update: shift those.
SOURCES = {"grpo": {"actor": 0, "completions": 1, "course": 1}, "sft": {"": 0}}
RENAME = {  # None: not kept
    "actor/loss": "policy_loss", "actor/kl": "kl", "actor/grad_norm": "grad_norm", "actor/perplexity": None,
    "actor/pg_clipfrac": "clip_fraction", "completions/mean_length": "completion_length_mean",
    "completions/max_length": "completion_length_max", "completions/min_length": None, "/loss": "loss",
    "/grad_norm": "grad_norm"}


class StepMetrics:
    """One row per step of `stage` (its `SOURCES` events + `extra(step)`), written two steps later or at flush."""

    def __init__(self, run_dir: str | os.PathLike, stage: str,
                 extra: Callable[[int], dict[str, Any]] = lambda step: {}) -> None:
        if stage not in SOURCES:
            raise ValueError(f"stage={stage!r} is unknown; use one of {sorted(SOURCES)}")
        self.run_dir, self.stage, self.extra, self.sources = Path(run_dir), stage, extra, SOURCES[stage]
        self.path = self.run_dir / f"metrics_{stage}.jsonl"
        self.csv_path = self.path.with_suffix(".csv")
        self.rows = read_metrics(self.path) if self.path.exists() else []
        self.pending: dict[int, dict[str, Any]] = {}  # rows waiting for late events
        self.arrived: dict[int, float] = {}  # when each step's first event came

    def options(self) -> Any:
        """Tunix's `MetricsLoggerOptions`: TensorBoard under ``run_dir/tensorboard/<stage>`` and this."""
        log_dir = str(self.run_dir / "tensorboard" / self.stage)
        tensorboard = lambda: metrics_logger.TensorboardBackend(log_dir=log_dir, flush_every_n_steps=1)  # noqa: E731
        return metrics_logger.MetricsLoggerOptions(log_dir=log_dir, flush_every_n_steps=1,
                                                   backend_kwargs={"custom_backend": [tensorboard, lambda: self]})

    @property
    def last_step(self) -> int:
        return self.rows[-1]["step"] if self.rows else 0

    def resume(self, step: int) -> None:
        """Keep the rows up to checkpoint `step` (the file rewritten whole); the clock starts now."""
        self.rows = [r for r in self.rows if r["step"] <= step]
        self._write()
        self.arrived[step] = time.perf_counter()

    def log(self, step: int, row: Mapping[str, Any]) -> None:
        """Add the row of `step`, on disk when this returns."""
        self.rows.append({"step": int(step), **flatten_metrics(row), "time": round(time.time(), 3)})
        self._write()

    def _write(self) -> None:
        atomic_write(self.path, "".join(json.dumps(r, default=str) + "\n" for r in self.rows))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, list(dict.fromkeys(k for r in self.rows for k in r)), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.csv_path, buffer.getvalue())

    def log_scalar(self, event: str, value: Any, **kwargs: Any) -> None:
        """Tunix's LoggingBackend protocol: keep `<prefix>/train/<name>` events of the stage's sources."""
        step, (prefix, _, rest) = kwargs.get("step"), event.partition("/")
        mode, _, name = rest.partition("/")
        name = RENAME.get(f"{prefix}/{name}", name)
        if step is None or mode != "train" or prefix not in self.sources or not name:
            return
        step = int(step) + self.sources[prefix]
        try:
            self.pending.setdefault(step, {})[name] = float(np.asarray(value).mean())
        except (TypeError, ValueError):
            return
        if self.sources[prefix] == 0:
            self.arrived.setdefault(step, time.perf_counter())
        self.flush(step - 2)

    def flush(self, step: int | None = None) -> None:
        """Write the rows of every step up to `step` (all, for None)."""
        for done in sorted(k for k in self.pending if step is None or k <= step):
            row = self.pending.pop(done)
            if done >= 1 and done > self.last_step:
                before, now = self.arrived.get(done - 1), self.arrived.get(done)
                row["seconds_per_step"] = now - before if before and now else math.nan
                self.log(done, {**row, "stage": self.stage, **self.extra(done)})

    close = flush  # Tunix closes its backends at the end: every row left is written


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a metrics JSONL file; an unreadable line is skipped with a warning."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No metrics at {path}. Part 06's training writes metrics_<stage>.jsonl into the "
                                "run directory; run it (or check COURSE_RUN_DIR).")
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            row = None
            warnings.warn(f"{path}: line {number} is not valid JSON; skipped.", stacklevel=2)
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """One flat row: nested dicts joined with "_", numpy/JAX scalars made plain numbers."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, f"{prefix}{key}_"))
        else:
            out[f"{prefix}{key}"] = value.item() if hasattr(value, "item") and np.ndim(value) == 0 else value
    return out


def is_finite_number(value: Any) -> bool:
    """True for an int/float that is not NaN or infinite (plots skip the others)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
