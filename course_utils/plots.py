"""Every figure the notebooks show, as PNG files: reward weights and reward tests (parts 03
and 05), learning curves (part 06), evaluation (part 07).

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

import numpy as np

from course_utils.evaluation import ERROR_CATEGORIES, EvalResult, metric_label
from course_utils.metrics import REWARD_COMPONENTS, flatten_metrics, is_finite_number, read_metrics
from course_utils.rewards import COMPONENTS, annealed_weights, static_weights

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


# --- rewards (parts 03 and 05) and evaluation (part 07) -------------------------------------


def plot_annealing(config: Any, path: str | os.PathLike, points: int = 101) -> Path:
    """The annealed reward weights over training steps, stacked, saved as a PNG (part 03)."""
    from matplotlib.figure import Figure

    steps = [(config.max_steps - 1) * i / (points - 1) for i in range(points)]
    weights = [annealed_weights(config, s) for s in steps]
    fig = Figure(figsize=(9, 4), dpi=100, layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.stackplot(steps, *[[w[k] for w in weights] for k in COMPONENTS], labels=COMPONENTS,
                  colors=[_COLORS[k] for k in COMPONENTS], alpha=0.8)
    ax1.set(title="Annealed weights (stacked, sum = 1)", xlabel="GRPO step", ylabel="weight", ylim=(0, 1))
    ax1.legend(loc="lower left", fontsize=8)
    ax2.plot(steps, [w["format"] + w["coherence"] for w in weights], label="w_trace = format + coherence", color="tab:blue")
    ax2.plot(steps, [w["correctness"] for w in weights], label="w_correct", color="tab:green")
    ax2.plot(steps, [w["calibration"] for w in weights], label="calibration (the rest)", color=_COLORS["calibration"])
    static = static_weights(config)
    ax2.axhline(static["format"] + static["coherence"], color="tab:blue", ls=":", lw=1, label="static trace")
    ax2.axhline(static["correctness"], color="tab:green", ls=":", lw=1, label="static correctness")
    ax2.set(title="Trace vs correctness", xlabel="GRPO step", ylim=(0, 1))
    ax2.legend(fontsize=8)
    return _save(fig, path)


def plot_reward_distributions(scores: Mapping[str, Sequence[float]], path: str | os.PathLike,
                             title: str = "Composite reward: gold vs perturbed") -> Path:
    """One histogram per perturbation against the gold scores, saved as a PNG (part 05)."""
    from matplotlib.figure import Figure

    others = [k for k in scores if k != "gold"]
    cols = 3
    rows = max(1, -(-len(others) // cols))
    fig = Figure(figsize=(4 * cols, 2.8 * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    bins = [i / 25 for i in range(26)]
    for ax, name in zip(axes, others):
        ax.hist(scores.get("gold", []), bins=bins, alpha=0.6, color="tab:green", label="gold")
        ax.hist(scores[name], bins=bins, alpha=0.6, color="tab:red", label=name)
        ax.set(title=name, xlabel="total reward", xlim=(0, 1))
        ax.legend(fontsize=8)
    for ax in axes[len(others):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _save(fig, path)


def plot_catalogue(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Horizontal bars: each hacking attempt's total against the honest reply's, saved as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 0.35 * len(rows) + 1.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    names = [r["attempt"] for r in rows]
    ax.barh(names, [r["hack"] for r in rows], color="tab:red", alpha=0.7, label="hacking attempt")
    if rows:
        ax.axvline(rows[0]["honest"], color="tab:green", lw=2, label="honest reply")
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="composite reward", title="Reward hacking attempts vs the honest reply")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_evaluation(results: Sequence[EvalResult], path: str | os.PathLike) -> Path:
    """Three panels saved as PNG (part 07): the composite-reward histogram of each model, the
    headline metrics with 95 % intervals, and the error breakdown as stacked bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.5), dpi=100, layout="constrained")
    ax_hist, ax_bars, ax_err = fig.subplots(1, 3)
    colors = ["tab:gray", "tab:blue", "tab:green", "tab:orange", "tab:purple"]
    bins = np.linspace(0, 1, 21)
    for i, r in enumerate(results):
        rewards_ = r.values("reward")
        rewards_ = rewards_[~np.isnan(rewards_)]
        if rewards_.size:
            lo, hi = min(0.0, rewards_.min()), max(1.0, rewards_.max())
            ax_hist.hist(rewards_, bins=np.linspace(lo, hi, 21) if (lo, hi) != (0.0, 1.0) else bins,
                         alpha=0.5, color=colors[i % len(colors)], label=f"{r.name} (mean {rewards_.mean():.2f})")
    ax_hist.set(title="Composite reward per problem", xlabel="reward", ylabel="problems")
    if results:
        ax_hist.legend(fontsize=8)

    shown = [m for m in ("strict", "lenient", "format", "partial", "pass_at_k", "maj_at_k")
             if all(m in r.metrics for r in results)]
    width = 0.8 / max(1, len(results))
    x = np.arange(len(shown))
    for i, r in enumerate(results):
        means = np.array([r.metrics[m]["mean"] for m in shown]) * 100
        lows = np.array([r.metrics[m]["low"] for m in shown]) * 100
        highs = np.array([r.metrics[m]["high"] for m in shown]) * 100
        ax_bars.bar(x + i * width, means, width, yerr=[means - lows, highs - means], capsize=3,
                    color=colors[i % len(colors)], label=r.name)
    ax_bars.set_xticks(x + width * (len(results) - 1) / 2, [metric_label(m, results) for m in shown], rotation=20,
                       ha="right", fontsize=8)
    ax_bars.set(title="Metrics with 95 % bootstrap intervals", ylabel="%", ylim=(0, 105))
    if results:
        ax_bars.legend(fontsize=8)

    bottom = np.zeros(len(results))
    error_colors = {"correct": "tab:green", "truncated": "tab:orange", "no_answer": "tab:gray",
                    "format_broken": "tab:red", "wrong_arithmetic": "tab:purple", "wrong_answer": "tab:brown"}
    for category in ERROR_CATEGORIES:
        counts = np.array([r.errors.get(category, 0) / max(1, len(r.rows)) * 100 for r in results])
        ax_err.bar([r.name for r in results], counts, bottom=bottom, color=error_colors[category], label=category)
        bottom += counts
    ax_err.set(title="Where the replies go wrong", ylabel="% of problems", ylim=(0, 100))
    ax_err.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    return _save(fig, path)


# --- helpers ---------------------------------------------------------------------------------


SIGNAL_PANELS = (("mixed_group_frac", "Mixed-correctness groups (the signal)", "share of groups"),
                 ("accuracy", "Rollout accuracy", "share correct"),
                 ("reward_mean", "Reward", "mean reward"),
                 ("completion_length_mean", "Reply length", "tokens"))


def plot_signal_curves(runs: History | Mapping[str, History], path: str | os.PathLike, *,
                       title: str | None = None) -> Path:
    """Four panels over GRPO steps, saved as a PNG (part 06): the share of groups with mixed
    correctness, the rollouts' accuracy, the reward and the reply length with the share of
    truncated replies (dotted, right axis) — what carries GRPO's signal, unlike the policy loss,
    which at μ = 1 is ≈ β·KL. `runs` is one history
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
    if any(_series(rows, "truncation_rate")[0] for rows in histories.values()):  # beside the length
        truncated = axes[3].twinx()
        for label, rows in histories.items():
            _line(truncated, rows, "truncation_rate", f"{label}: truncated", linestyle=":")
        truncated.set(ylabel="share truncated", ylim=(-0.02, 1.02))
        truncated.legend(loc="center right", fontsize=8)
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
    """The reasoning-trace score per step: format and coherence, weighted as the step paid them."""
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
