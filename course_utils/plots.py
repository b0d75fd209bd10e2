"""Every figure the notebooks show, as PNG files (parts 03, 05-07), by matplotlib's `Figure`
without pyplot (headless, no open figures left). A metrics history is `read_metrics` rows or a
``metrics_<stage>.jsonl`` path; missing fields, NaNs, one row or none are fine."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.signal
from matplotlib.figure import Figure

from course_utils.evaluation import ERROR_CATEGORIES, EvalResult, metric_label
from course_utils.files import atomic_write
from course_utils.metrics import REWARD_COMPONENTS, flatten_metrics, is_finite_number, read_metrics
from course_utils.rewards import COMPONENTS, annealed_weights, static_weights

History = Sequence[Mapping[str, Any]] | str | os.PathLike
COLORS = {"format": "tab:blue", "coherence": "tab:purple", "correctness": "tab:green",
          "efficiency": "tab:orange", "calibration": "tab:brown", "total": "black"}
SIGNAL_PANELS = (("mixed_group_frac", "Mixed-correctness groups (the signal)", "share of groups"),
                 ("accuracy", "Rollout accuracy", "share correct"),
                 ("reward_mean", "Reward", "mean reward"),
                 ("completion_length_mean", "Reply length", "tokens"))


def _figure(size: tuple[float, float], rows: int = 1, cols: int = 1, title: str | None = None,
            **kwargs: Any) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    fig.suptitle(title or "")
    return fig, fig.subplots(rows, cols, squeeze=False, **kwargs).ravel()


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Save atomically, so a viewer never reads half a PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".").lower() or "png")
    return atomic_write(path, buffer.getvalue())


def _rows(history: History) -> list[dict[str, Any]]:
    rows = read_metrics(history) if isinstance(history, (str, os.PathLike)) else list(history or [])
    if not all(isinstance(row, Mapping) for row in rows):
        raise TypeError("history must be a list of dicts (metrics rows) or a JSONL path.")
    return [flatten_metrics(row) for row in rows]


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` where a row holds a finite number (no step: the row's index)."""
    points = [(row["step"] if is_finite_number(row.get("step")) else i, float(row[key]))
              for i, row in enumerate(rows) if is_finite_number(row.get(key))]
    return [x for x, _ in points], [y for _, y in points]


def _panel(ax: Any, lines: Sequence[tuple], title: str, ylabel: str, legend: str = "best") -> None:
    """Draw the (rows, key, label, style) lines with data; "no data" when none has any."""
    drawn = False
    for rows, key, label, style in lines:
        x, y = _series(rows, key)
        if x:
            marker = {"marker": "o", "markersize": 4} if len(x) <= 30 else {}
            ax.plot(x, y, label=label, **{"color": COLORS.get(label), **marker, **style})
            drawn = True
    ax.set(title=title, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(loc=legend, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center",
                fontsize=14, color="gray")


def _mark_phases(ax: Any, rows: Sequence[Mapping[str, Any]], label: bool) -> None:
    """Dotted vertical lines where the curriculum phase changes (named when `label`)."""
    phases = [(row["step"] if is_finite_number(row.get("step")) else i, row["phase"])
              for i, row in enumerate(rows) if isinstance(row.get("phase"), str)]
    for n, (step, phase) in enumerate(phases):
        if n == 0 or phase != phases[n - 1][1]:
            if n:
                ax.axvline(step, color="gray", linestyle=":", linewidth=1)
            if label:
                ax.annotate(phase, xy=(step, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(2, -10), textcoords="offset points", fontsize=8)


def plot_training_curves(history: History, path: str | os.PathLike, *,
                         title: str | None = None) -> Path:
    """Four panels of a GRPO run, saved as a PNG (part 06): policy loss, KL to the reference,
    reward (total and components) and reward weights; curriculum phases marked in each."""
    return _save(_training_figure(_rows(history), title), path)


def _training_figure(rows: Sequence[Mapping[str, Any]], title: str | None) -> Figure:
    fig, axes = _figure((12, 8), 2, 2, title or "GRPO training", sharex=True)
    loss = "policy_loss" if _series(rows, "policy_loss")[0] else "loss"
    components = [(rows, f"reward_{n}_mean", n, {"linestyle": "--"}) for n in REWARD_COMPONENTS]
    weights = [(rows, f"weight_{n}", n, {}) for n in REWARD_COMPONENTS]
    panels = (("Loss", "loss", [(rows, loss, loss.replace("_", " "), {"color": "tab:red"})]),
              ("Reward", "reward", [(rows, "reward_mean", "total", {"linewidth": 2})] + components),
              ("KL to the reference", "KL", [(rows, "kl", "KL", {"color": "tab:gray"})]),
              ("Reward weights", "weight", weights))
    for ax, (name, ylabel, lines) in zip(axes, panels):
        _panel(ax, lines, name, ylabel)
        _mark_phases(ax, rows, label=name == "Reward")
    for ax in axes[2:]:
        ax.set_xlabel("step")
    return fig


def plot_sft_loss(history: History, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """The SFT loss per step, raw and, from 10 steps on, smoothed (EMA, decay 0.8), as a PNG."""
    return _save(_sft_figure(_rows(history), title), path)


def _sft_figure(rows: Sequence[Mapping[str, Any]], title: str | None) -> Figure:
    fig, (ax,) = _figure((8, 4.5), title=title or "SFT warm-start")
    x, y = _series(rows, "loss")
    ema = scipy.signal.lfilter([0.2], [1, -0.8], y, zi=[0.8 * y[0]])[0] if len(x) >= 10 else []
    smoothed = [{"step": s, "smoothed": float(v)} for s, v in zip(x, ema)]
    _panel(ax, [(rows, "loss", "loss", {"color": "tab:red", "alpha": 0.45 if smoothed else 1}),
                (smoothed, "smoothed", "loss (smoothed)", {"color": "tab:red", "linewidth": 2})],
           "Loss", "cross-entropy")
    ax.set_xlabel("step")
    return fig


def plot_signal_curves(runs: History | Mapping[str, History], path: str | os.PathLike, *,
                       title: str | None = None) -> Path:
    """GRPO's signal, unlike the policy loss (≈ β·KL at μ = 1), saved as a PNG (part 06):
    the `SIGNAL_PANELS`, the share truncated dotted beside the length. `runs`: one history or
    several by label ({"GRPO": ..., "control (lr0)": ...}); a missing file: a run not made yet."""
    labelled = runs if isinstance(runs, Mapping) else {"GRPO": runs}
    histories = {label: [] if isinstance(h, (str, os.PathLike)) and not Path(h).exists()
                 else _rows(h) for label, h in labelled.items()}
    return _save(_signal_figure(histories, title), path)


def _signal_figure(histories: Mapping[str, Sequence[Mapping[str, Any]]],
                   title: str | None) -> Figure:
    fig, axes = _figure((12, 8), 2, 2, title or "GRPO signal over steps", sharex=True)
    for ax, (key, name, ylabel) in zip(axes, SIGNAL_PANELS):
        _panel(ax, [(rows, key, label, {}) for label, rows in histories.items()], name, ylabel)
    truncated = [(rows, "truncation_rate", f"{label}: truncated", {"linestyle": ":"})
                 for label, rows in histories.items()]
    if any(_series(rows, key)[0] for rows, key, _, _ in truncated):
        ax = axes[3].twinx()
        _panel(ax, truncated, "", "share truncated", legend="center right")
        ax.set_ylim(-0.02, 1.02)
    for ax in axes[2:]:
        ax.set_xlabel("GRPO step")
    return fig


def plot_annealing(config: Any, path: str | os.PathLike, points: int = 101) -> Path:
    """The annealed reward weights over training steps, stacked, saved as a PNG (part 03)."""
    steps = np.linspace(0, config.max_steps - 1, points)
    weights = {k: [annealed_weights(config, float(s))[k] for s in steps] for k in COMPONENTS}
    static = static_weights(config)
    fig, (ax1, ax2) = _figure((9, 4), 1, 2)
    ax1.stackplot(steps, *weights.values(), labels=COMPONENTS, alpha=0.8,
                  colors=[COLORS[k] for k in COMPONENTS])
    ax1.set(title="Annealed weights (sum = 1)", xlabel="GRPO step", ylabel="weight", ylim=(0, 1))
    ax1.legend(loc="lower left", fontsize=8)
    ax2.plot(steps, np.add(weights["format"], weights["coherence"]), color="tab:blue",
             label="w_trace = format + coherence")
    ax2.plot(steps, weights["correctness"], label="w_correct", color="tab:green")
    ax2.plot(steps, weights["calibration"], label="calibration (the rest)", color="tab:brown")
    ax2.axhline(static["format"] + static["coherence"], color="tab:blue", ls=":",
                label="static trace")
    ax2.axhline(static["correctness"], color="tab:green", ls=":", label="static correctness")
    ax2.set(title="Trace vs correctness", xlabel="GRPO step", ylim=(0, 1))
    ax2.legend(fontsize=8)
    return _save(fig, path)


def plot_reward_distributions(scores: Mapping[str, Sequence[float]], path: str | os.PathLike,
                              title: str = "Composite reward: gold vs perturbed") -> Path:
    """One histogram per perturbation against the gold scores, saved as a PNG (part 05)."""
    others = [k for k in scores if k != "gold"]
    rows = max(1, -(-len(others) // 3))
    fig, axes = _figure((12, 2.8 * rows), rows, 3, title)
    for ax, name in zip(axes, others):
        ax.hist([scores.get("gold", []), scores[name]], bins=25, range=(0, 1), alpha=0.6,
                color=["tab:green", "tab:red"], label=["gold", name], histtype="stepfilled")
        ax.set(title=name, xlabel="total reward", xlim=(0, 1))
        ax.legend(fontsize=8)
    for ax in axes[len(others):]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_catalogue(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Horizontal bars: each hacking attempt's total against the honest reply's (part 05)."""
    fig, (ax,) = _figure((8, 0.35 * len(rows) + 1.2))
    ax.barh([r["attempt"] for r in rows], [r["hack"] for r in rows], color="tab:red", alpha=0.7,
            label="hacking attempt")
    if rows:
        ax.axvline(rows[0]["honest"], color="tab:green", lw=2, label="honest reply")
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="composite reward", title="Hacking attempts vs the honest reply")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_evaluation(results: Sequence[EvalResult], path: str | os.PathLike) -> Path:
    """Three panels saved as a PNG (part 07): each model's composite-reward histogram, the
    headline metrics with 95 % intervals, and the error categories as stacked bars."""
    fig, (ax_hist, ax_bars, ax_err) = _figure((15, 4.5), 1, 3)
    shown = [m for m in ("strict", "lenient", "format", "partial", "pass_at_k", "maj_at_k")
             if all(m in r.metrics for r in results)]
    width, x = 0.8 / max(1, len(results)), np.arange(len(shown))
    for i, r in enumerate(results):
        color = ("tab:gray", "tab:blue", "tab:green", "tab:orange", "tab:purple")[i % 5]
        rewards = r.values("reward")[~np.isnan(r.values("reward"))]
        if rewards.size:
            ax_hist.hist(rewards, bins=20, range=(min(0.0, rewards.min()), max(1.0, rewards.max())),
                         alpha=0.5, color=color, label=f"{r.name} (mean {rewards.mean():.2f})")
        mean, low, high = (np.array([100 * r.metrics[m][s] for m in shown])
                           for s in ("mean", "low", "high"))
        ax_bars.bar(x + i * width, mean, width, yerr=[mean - low, high - mean], capsize=3,
                    color=color, label=r.name)
    ax_hist.set(title="Composite reward per problem", xlabel="reward", ylabel="problems")
    ticks = x + width * (len(results) - 1) / 2
    ax_bars.set_xticks(ticks, [metric_label(m, results) for m in shown], rotation=20, ha="right")
    ax_bars.set(title="Metrics with 95 % bootstrap intervals", ylabel="%", ylim=(0, 105))
    bottom = np.zeros(len(results))
    colors = ("tab:green", "tab:orange", "tab:gray", "tab:red", "tab:purple", "tab:brown")
    for category, color in zip(ERROR_CATEGORIES, colors):
        share = np.array([100 * r.errors.get(category, 0) / max(1, len(r.rows)) for r in results])
        ax_err.bar([r.name for r in results], share, bottom=bottom, color=color, label=category)
        bottom += share
    ax_err.set(title="Where the replies go wrong", ylabel="% of problems", ylim=(0, 100))
    ax_err.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    if results:
        ax_hist.legend(fontsize=8)
        ax_bars.legend(fontsize=8)
    return _save(fig, path)
