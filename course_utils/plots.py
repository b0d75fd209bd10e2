"""Learning curves as PNG files the notebooks show (part 06).

Built on `matplotlib.figure.Figure` without pyplot, so it works headless (CI, Agg) and leaves
no open figures behind. Each function takes a metrics history — the rows `read_metrics`
returns, or the path of a `metrics_<stage>.jsonl` — and tolerates missing fields, NaNs, a
single row and an empty history (the panel then says "no data").

>>> from IPython.display import Image                                        # doctest: +SKIP
>>> Image(filename=plot_training_curves(RUN_DIR / "metrics_grpo.jsonl", RUN_DIR / "grpo.png"))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from course_utils.metrics import REWARD_COMPONENTS, flatten_metrics, is_finite_number, read_metrics

History = Sequence[Mapping[str, Any]] | str | os.PathLike
_COLORS = {"format": "tab:blue", "coherence": "tab:purple", "correctness": "tab:green", "efficiency": "tab:orange",
           "calibration": "tab:brown"}


def plot_training_curves(history: History, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Four panels of a GRPO run, saved as a PNG at `path` (part 06): loss (policy loss, KL on
    the right axis), reward (total ± std and each component), trace score (format + coherence)
    and the reward weights over steps. Curriculum phase changes are marked in every panel."""
    return _save(_training_figure(_rows(history), title), path)


def _training_figure(rows: Sequence[Mapping[str, Any]], title: str | None) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), dpi=100, layout="constrained")
    (ax_loss, ax_reward), (ax_trace, ax_weights) = fig.subplots(2, 2, sharex=True)
    fig.suptitle(title or "GRPO training" + ("" if rows else " — no data yet"))

    # Loss panel: policy loss on the left, KL on the right.
    loss_key = "policy_loss" if _series(rows, "policy_loss")[0] else "loss"
    drawn = _line(ax_loss, rows, loss_key, loss_key.replace("_", " "), color="tab:red")
    kl_x, kl_y = _series(rows, "kl")
    if kl_x:
        ax_kl = ax_loss.twinx()
        ax_kl.plot(kl_x, kl_y, color="tab:gray", linestyle="--", label="KL to reference", **_marker(kl_x))
        ax_kl.set_ylabel("KL")
        ax_kl.legend(loc="upper right", fontsize=8)
    _finish(ax_loss, "Loss", "loss", drawn or bool(kl_x), legend_loc="upper left")

    # Reward panel: total with a ±1 std band, components dashed.
    x, y = _series(rows, "reward_mean")
    drawn = bool(x)
    if x:
        ax_reward.plot(x, y, color="black", linewidth=2, label="total", **_marker(x))
        sx, sy = _series(rows, "reward_std")
        band = {s: v for s, v in zip(sx, sy)}
        bx = [s for s in x if s in band]
        if bx:
            mean = dict(zip(x, y))
            ax_reward.fill_between(bx, [mean[s] - band[s] for s in bx], [mean[s] + band[s] for s in bx],
                                   color="black", alpha=0.12, label="total ± std")
    for name in REWARD_COMPONENTS:
        drawn |= _line(ax_reward, rows, f"reward_{name}_mean", name, color=_COLORS[name], linestyle="--")
    _finish(ax_reward, "Reward", "reward", drawn)

    # Trace panel: the reasoning-trace score and the two rewards it is made of.
    tx, ty, label = _trace_series(rows)
    drawn = bool(tx)
    if tx:
        ax_trace.plot(tx, ty, color="black", linewidth=2, label=label, **_marker(tx))
    for name in ("format", "coherence"):
        drawn |= _line(ax_trace, rows, f"reward_{name}_mean", name, color=_COLORS[name], linewidth=1, alpha=0.7)
    _finish(ax_trace, "Trace score (format + coherence)", "score", drawn)

    # Weights panel.
    drawn = False
    for name in REWARD_COMPONENTS:
        drawn |= _line(ax_weights, rows, f"weight_{name}", name, color=_COLORS[name])
    if drawn:
        ax_weights.set_ylim(-0.02, 1.02)
    _finish(ax_weights, "Reward weights", "weight", drawn)

    for ax in (ax_loss, ax_reward, ax_trace, ax_weights):
        _mark_phases(ax, rows, label=ax is ax_reward)
    for ax in (ax_trace, ax_weights):
        ax.set_xlabel("step")
    return fig


def plot_sft_loss(history: History, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """The SFT warm-start's loss per step (raw and smoothed), with the learning rate on the
    right axis when logged, saved as a PNG at `path` (part 06)."""
    return _save(_sft_figure(_rows(history), title), path)


def _sft_figure(rows: Sequence[Mapping[str, Any]], title: str | None) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    fig.suptitle(title or "SFT warm-start" + ("" if rows else " — no data yet"))
    x, y = _series(rows, "loss")
    if x:
        ax.plot(x, y, color="tab:red", alpha=0.45 if len(x) >= 10 else 1.0, label="loss", **_marker(x))
        if len(x) >= 10:
            ax.plot(x, _ema(y, 0.8), color="tab:red", linewidth=2, label="loss (smoothed)")
    lx, ly = _series(rows, "learning_rate")
    if lx and x:
        ax_lr = ax.twinx()
        ax_lr.plot(lx, ly, color="tab:gray", linestyle=":", label="learning rate")
        ax_lr.set_ylabel("learning rate")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax_lr.legend(loc="upper right", fontsize=8)
    _finish(ax, "Loss", "cross-entropy", bool(x), legend_loc="upper left")
    ax.set_xlabel("step")
    return fig


# --- helpers ---------------------------------------------------------------------------------


SIGNAL_PANELS = (("mixed_group_frac", "Mixed-correctness groups (the signal)", "share of groups"),
                 ("accuracy", "Rollout accuracy", "share correct"),
                 ("reward_mean", "Reward", "mean reward"),
                 ("completion_length_mean", "Reply length", "tokens"))


def plot_signal_curves(runs: History | Mapping[str, History], path: str | os.PathLike, *,
                       title: str | None = None) -> Path:
    """Four panels over GRPO steps, saved as a PNG (part 06): the share of groups with mixed
    correctness, the rollouts' accuracy, the reward and the reply length. `runs` is one history
    or several by label (e.g. {"GRPO": ..., "control (lr0)": ...}), drawn in the same panels."""
    labelled = dict(runs) if isinstance(runs, Mapping) and not _is_row(runs) else {"GRPO": runs}
    histories = {label: _rows(h) if not isinstance(h, (str, os.PathLike)) or Path(h).exists() else []
                 for label, h in labelled.items()}
    return _save(_signal_figure(histories, title), path)


def _signal_figure(histories: Mapping[str, Sequence[Mapping[str, Any]]], title: str | None) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), dpi=100, layout="constrained")
    axes = fig.subplots(2, 2, sharex=True).ravel()
    fig.suptitle(title or "GRPO signal over steps")
    for ax, (key, name, ylabel) in zip(axes, SIGNAL_PANELS):
        drawn = False
        for label, rows in histories.items():
            drawn = _line(ax, rows, key, label) or drawn
        _finish(ax, name, ylabel, drawn)
    for ax in axes[2:]:
        ax.set_xlabel("GRPO step")
    return fig


def _is_row(value: Any) -> bool:
    return isinstance(value, Mapping) and "step" in value


def _rows(history: History) -> list[Mapping[str, Any]]:
    if isinstance(history, (str, os.PathLike)):
        history = read_metrics(history)
    if history is None:
        return []
    rows = list(history)
    bad = [type(r).__name__ for r in rows if not isinstance(r, Mapping)]
    if bad:
        raise TypeError(f"history must be a list of dicts (metrics rows) or a JSONL path; found {bad[0]} rows.")
    return [flatten_metrics(r) for r in rows]


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` over the rows that hold a finite number for it."""
    xs, ys = [], []
    for index, row in enumerate(rows):
        value = row.get(key)
        if is_finite_number(value):
            step = row.get("step")
            xs.append(step if is_finite_number(step) else index)
            ys.append(float(value))
    return xs, ys


def _trace_series(rows: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float], str]:
    x, y = _series(rows, "trace_score")
    if x:
        return x, y, "trace score"
    xs, ys, weighted = [], [], False
    for index, row in enumerate(rows):
        parts = {n: row.get(f"reward_{n}_mean") for n in ("format", "coherence")}
        parts = {n: float(v) for n, v in parts.items() if is_finite_number(v)}
        if not parts:
            continue
        weights = {n: row.get(f"weight_{n}") for n in parts}
        if all(is_finite_number(w) for w in weights.values()) and sum(weights.values()) > 0:
            value = sum(parts[n] * weights[n] for n in parts) / sum(weights.values())
            weighted = True
        else:
            value = sum(parts.values()) / len(parts)
        step = row.get("step")
        xs.append(step if is_finite_number(step) else index)
        ys.append(value)
    return xs, ys, "trace score (weighted mean)" if weighted else "trace score (mean)"


def _marker(xs: Sequence[float]) -> dict[str, Any]:
    return {"marker": "o", "markersize": 4} if len(xs) <= 30 else {}


def _line(ax: Any, rows: Sequence[Mapping[str, Any]], key: str, label: str, **style: Any) -> bool:
    x, y = _series(rows, key)
    if x:
        ax.plot(x, y, label=label, **_marker(x), **style)
    return bool(x)


def _finish(ax: Any, title: str, ylabel: str, drawn: bool, legend_loc: str = "best") -> None:
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if drawn:
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(loc=legend_loc, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=14, color="gray")


def _mark_phases(ax: Any, rows: Sequence[Mapping[str, Any]], label: bool) -> None:
    """Dotted vertical lines where the curriculum phase changes (labelled in one panel)."""
    previous = None
    for index, row in enumerate(rows):
        phase = row.get("phase")
        if not isinstance(phase, str) or phase == previous:
            continue
        step = row.get("step") if is_finite_number(row.get("step")) else index
        if previous is not None:
            ax.axvline(step, color="gray", linestyle=":", linewidth=1)
        if label:
            ax.annotate(phase, xy=(step, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                        textcoords="offset points", fontsize=8, color="dimgray")
        previous = phase


def _ema(values: Sequence[float], decay: float) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else decay * acc + (1 - decay) * v
        out.append(acc)
    return out


def _save(fig: Any, path: str | os.PathLike) -> Path:
    """Save atomically (temp file + rename) so a viewer never reads half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".").lower() or "png"
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format=fmt)
    os.replace(tmp, path)
    return path
