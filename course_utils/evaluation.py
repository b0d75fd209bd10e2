"""Honest evaluation: metrics with confidence intervals, error analysis, tables (part 07).

Per reply: ``strict`` (the tagged answer is right, as part 03's reward judges it), ``lenient``
(the last number anywhere is right), ``format`` (full format marks), ``partial`` (the tagged
number within 10 %), ``reward`` and its components as GRPO pays them, ``length_tokens``, and
the first `ERROR_CATEGORIES` entry that applies (part 07 explains them).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.stats
from tqdm.auto import tqdm

from course_utils import generate as generation, rewards
from course_utils.data import build_prompt, parse_number
from course_utils.export import load_tunix_lora
from course_utils.files import atomic_write

ERROR_CATEGORIES = ("correct", "truncated", "no_answer", "format_broken", "wrong_arithmetic",
                    "wrong_answer")
METRIC_LABELS = {"strict": "strict accuracy", "lenient": "lenient accuracy",
                 "format": "format compliance", "partial": "partial accuracy (±10 %)",
                 "reward": "composite reward", "length_tokens": "mean length (tokens)"}
TABLE_METRICS = ("strict", "lenient", "format", "partial", "reward", "length_tokens", "pass_at_k",
                 "maj_at_k")
SAMPLED_METRICS = ("pass_at_1", "pass_at_k", "maj_at_k")
TRUNCATION_SLACK = 2  # re-encoding a decoded reply can merge a token or two differently
RESULTS_DIR = "eval"
KAGGLE_INPUT = Path("/kaggle/input")


def is_truncated(response: Any, n_tokens: int | None, max_new_tokens: int | None) -> bool:
    """True when a reply reached the generation limit (within `TRUNCATION_SLACK` tokens) without
    ending on a closed ``</answer>`` (parts 06 and 07); without a length or a limit, never."""
    if n_tokens is None or max_new_tokens is None:
        return False
    closed = rewards._text(response).endswith("</answer>")
    return n_tokens >= max_new_tokens - TRUNCATION_SLACK and not closed


def score_reply(response: Any, gold: Any, *, config: Any = None, difficulty: str | None = None,
                n_tokens: int | None = None, max_new_tokens: int | None = None,
                question: str | None = None) -> dict[str, Any]:
    """All scores of one reply, as a flat dict (part 07): strict, format and reward by part 03's
    `rewards.score_batch` with the `question` (it exposes made-up arithmetic), at the last GRPO
    step's weights; `n_tokens` and `max_new_tokens` decide ``truncated``. Never raises."""
    text = response if isinstance(response, str) else ""
    gold = str(gold)
    paid = rewards.score_batch([text], [gold], config, difficulties=[difficulty],
                               questions=[question], weights=rewards.final_weights(config))[0]
    tagged = paid.answer if paid.answer and paid.answer.strip() else None
    numbers = rewards.find_numbers(text)
    last = numbers[-1] if numbers else None
    value, exact = parse_number(tagged or ""), parse_number(gold)
    calculations = rewards.check_arithmetic(text)
    wrong = [c.text for c in calculations if not c.ok]
    row: dict[str, Any] = {
        "strict": bool(paid.correct), "lenient": rewards.answers_match(last, gold),
        "format": bool(paid.components["format"] >= 1.0),
        "partial": None not in (value, exact) and abs(value - exact) * 10 <= abs(exact),
        "reward": float(paid.total),
        **{f"reward_{k}": float(v) for k, v in paid.components.items()},
        "answer": tagged, "last_number": last,
        "truncated": is_truncated(text, n_tokens, max_new_tokens),
        "calculations": len(calculations), "wrong_calculations": wrong[:5],
    }
    if n_tokens is not None:
        row["length_tokens"] = int(n_tokens)
    checks = (("correct", row["strict"]), ("truncated", row["truncated"]),
              ("no_answer", tagged is None and last is None), ("format_broken", not row["format"]),
              ("wrong_arithmetic", bool(wrong)))
    row["error"] = next((name for name, hit in checks if hit), "wrong_answer")
    return row


def bootstrap_ci(values: Any, *, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` (NaNs dropped) and its 95 % percentile-bootstrap
    interval by `scipy.stats.bootstrap`, seeded (part 07); one value: zero width, none: NaNs."""
    column = np.asarray(values, dtype=np.float64).ravel()
    column = column[~np.isnan(column)]
    mean = float(column.mean()) if column.size else math.nan
    if column.size < 2:
        return mean, mean, mean
    ci = scipy.stats.bootstrap((column,), np.mean, n_resamples=n_resamples, method="percentile",
                               rng=np.random.default_rng(seed)).confidence_interval
    return mean, float(min(ci.low, mean)), float(max(ci.high, mean))


def paired_bootstrap(before: Any, after: Any, *, n_resamples: int = 2000,
                     seed: int = 0) -> dict[str, float]:
    """mean(after) − mean(before) on the *same* problems, with a paired bootstrap interval
    (part 07): resampling problems cancels the variation both share. NaN pairs are dropped."""
    x, y = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("before and after must be 1-D scores of the same problems, got shapes "
                         f"{x.shape} and {y.shape}")
    difference, low, high = bootstrap_ci(y - x, n_resamples=n_resamples, seed=seed)
    return {"difference": difference, "low": low, "high": high, "n": int(np.sum(~np.isnan(y - x)))}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples, c right (Chen et al., 2021): 1 − C(n−c, k)/C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer as part 03 normalises it ("18.00" votes for "18"), None ignored;
    a tie goes to the answer seen first; None when no sample answered."""
    votes = Counter(rewards.normalize_answer(str(a)) for a in answers if a is not None)
    return votes.most_common(1)[0][0] if votes else None


def sampled_scores(samples: Sequence[Sequence[Any]], golds: Sequence[Any],
                   k: int | None = None) -> list[dict[str, Any]]:
    """Per problem, from its sampled replies: pass@k, maj@k (the majority tagged answer is right)
    and pass@1 (the share of right samples) (part 07); k defaults to all samples."""
    out = []
    for replies, gold in zip(samples, golds):
        answers = [rewards.extract_answer(r) for r in replies]
        n, kk = len(answers), k or len(answers)
        if not 1 <= kk <= n:
            raise ValueError(f"k={kk} must be between 1 and the {n} sampled replies of a problem")
        c = sum(rewards.answers_match(a, gold) for a in answers)
        vote = majority_answer(answers[:kk])
        out.append({"pass_at_k": pass_at_k(n, c, kk), "maj_at_k": rewards.answers_match(vote, gold),
                    "pass_at_1": c / n, "k": kk, "n": n, "majority": vote, "correct_samples": c})
    return out


@dataclasses.dataclass
class EvalResult:
    """One model's evaluation (part 07): per-problem `rows` (question, gold, reply, scores) and
    `metrics[name]` = ``{"mean", "low", "high", "n"}``."""

    name: str
    rows: list[dict[str, Any]]
    metrics: dict[str, dict[str, float]]
    errors: dict[str, int]
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def values(self, metric: str) -> np.ndarray:
        """The per-problem values of `metric` (NaN where a problem lacks it), in problem order."""
        cells = [(r.get("sampled", {}) if metric in SAMPLED_METRICS else r).get(metric)
                 for r in self.rows]
        return np.array([math.nan if v is None else float(v) for v in cells], dtype=np.float64)


def summarize(name: str, rows: list[dict[str, Any]], *, settings: Mapping[str, Any] | None = None,
              seed: int = 0) -> EvalResult:
    """Means and bootstrap 95 % intervals of every metric in `rows`, error counts (part 07)."""
    errors = {category: sum(r["error"] == category for r in rows) for category in ERROR_CATEGORIES}
    result = EvalResult(name, rows, {}, errors, dict(settings or {}))
    keys = {key for row in rows for key in row}
    names = [m for m in TABLE_METRICS[:6] if m in keys]  # strict … length_tokens
    names += sorted(k for k in keys if k.startswith("reward_"))
    for metric in names + (list(SAMPLED_METRICS) if "sampled" in keys else []):
        values = result.values(metric)
        mean, low, high = bootstrap_ci(values, seed=seed)
        n = int(np.sum(~np.isnan(values)))
        result.metrics[metric] = {"mean": mean, "low": low, "high": high, "n": n}
    return result


def _field(example: Any, name: str, default: Any = ...) -> Any:
    get = example.get if isinstance(example, Mapping) else functools.partial(getattr, example)
    value = get(name, default)
    if value is ...:
        raise ValueError(f"each example needs a {name!r} (a course_utils.data.Example, or a dict)")
    return value


def evaluate_responses(name: str, examples: Sequence[Any], responses: Sequence[Any], *,
                       config: Any = None, n_tokens: Sequence[int] | None = None,
                       max_new_tokens: int | None = None, k: int | None = None,
                       samples: Sequence[Sequence[str]] | None = None,
                       settings: Mapping[str, Any] | None = None,
                       seed: int = 0) -> EvalResult:
    """Score replies already generated for `examples` (with ``question`` and ``answer``, as
    objects or dicts) and summarise them (part 07). `samples[i]` are sampled replies to
    problem i, for pass@k and maj@k (the first problems only, if shorter)."""
    lengths = len(responses) if n_tokens is None else len(n_tokens)
    if not len(responses) == lengths == len(examples):
        raise ValueError(f"{len(responses)} replies and {lengths} lengths for {len(examples)} "
                         "problems: they must pair up one to one.")
    rows = []
    for i, (example, reply) in enumerate(zip(examples, responses)):
        question, gold = _field(example, "question"), str(_field(example, "answer"))
        difficulty = _field(example, "difficulty", None)
        row = score_reply(reply, gold, config=config, difficulty=difficulty, question=question,
                          n_tokens=None if n_tokens is None else n_tokens[i],
                          max_new_tokens=max_new_tokens)
        rows.append({**row, "question": question, "gold": gold, "difficulty": difficulty,
                     "response": reply if isinstance(reply, str) else ""})
    if samples is not None:
        if len(samples) > len(rows):
            raise ValueError(f"samples cover {len(samples)} problems but there are {len(rows)}")
        golds = [row["gold"] for row in rows[:len(samples)]]
        for row, scored, replies in zip(rows, sampled_scores(samples, golds, k=k), samples):
            row["sampled"] = {**scored, "replies": list(replies)}
        settings = {"k": k or (len(samples[0]) if samples else None), **dict(settings or {})}
    return summarize(name, rows, settings=settings, seed=seed)


def generate_replies(model: Any, tokenizer: Any, model_config: Any, prompts: Sequence[str],
                     config: Any, *, greedy: bool = True, seed: int = 0,
                     batch_size: int | None = None, max_new_tokens: int | None = None,
                     desc: str = "generating", progress: bool = True) -> list[str]:
    """Replies to `prompts`, in their order, by `generate.generate`. Prompts of similar length
    share a batch (it decodes until its longest reply ends): on the cpu profile's 200 held-out
    problems after SFT, 19,472 decoded tokens instead of 29,264."""
    size = batch_size or config.eval_batch_size
    counts = generation.prompt_token_counts(tokenizer, list(prompts))
    order = sorted(range(len(prompts)), key=lambda i: counts[i])
    out = [""] * len(prompts)
    batches = tqdm(range(0, len(order), size), desc=desc, disable=not progress, leave=False)
    for b, start in enumerate(batches):
        ids = order[start:start + size]
        replies = generation.generate(
            model, tokenizer, model_config, [prompts[i] for i in ids], config, greedy=greedy,
            seed=generation.step_seed(seed, b), max_new_tokens=max_new_tokens, batch_size=size)
        for i, reply in zip(ids, replies):
            out[i] = reply
    return out


def token_counts(tokenizer: Any, texts: Sequence[str], limit: int | None = None) -> list[int]:
    """Tokens per reply, re-tokenised without BOS, capped at `limit` (a decoded reply can encode
    a token or two longer): the length `is_truncated` reads in GRPO's step metrics, in
    evaluation and in prompt filtering alike."""
    counts = [len(tokenizer.encode(t)) if t else 0 for t in texts]
    return counts if limit is None else [min(n, limit) for n in counts]


def _plan(name: str, config: Any, examples: Sequence[Any], checkpoint: Any = None,
          k: int | None = None, sampled_examples: int | None = None,
          max_new_tokens: int | None = None) -> dict[str, Any]:
    """The settings that make two evaluations of model `name` the same one."""
    k = config.eval_samples_k if k is None else int(k)
    if sampled_examples is None:
        sampled_examples = config.eval_sampled_examples
    m = len(examples) if sampled_examples is None else min(int(sampled_examples), len(examples))
    m = max(0, m) if k > 1 else 0
    limit = config.max_generation_length if max_new_tokens is None else int(max_new_tokens)
    return {"examples": len(examples), "k": k if m else None, "sampled_examples": m,
            "max_new_tokens": limit, "checkpoint": None if checkpoint is None else str(checkpoint),
            "config_fingerprint": config.fingerprint(config.evaluation_fields(name))}


def _reusable(run_dir: str | os.PathLike, name: str, examples: Sequence[Any],
              want: Mapping[str, Any]) -> EvalResult | None:
    """The result of `name` saved in this run on the same problems with the settings `want`
    (k and sampled problems only when `want` samples: a greedy-only ask takes any)."""
    saved = saved_result(run_dir, name)
    keys = [key for key in want if want["k"] or key not in ("k", "sampled_examples")]
    if saved is None or any(saved.settings.get(key) != want[key] for key in keys):
        return None
    same = [r.get("question") for r in saved.rows] == [_field(e, "question") for e in examples]
    return saved if same else None


def evaluate_model(loaded: Any, examples: Sequence[Any], config: Any, *, model: Any = None,
                   name: str = "model", k: int | None = None, sampled_examples: int | None = None,
                   max_new_tokens: int | None = None, seed: int | None = None,
                   checkpoint: Any = None, progress: bool = True,
                   run_dir: str | os.PathLike | None = None) -> EvalResult:
    """Generate and score `examples` with one model (part 07).

    Greedy replies (to `build_prompt`, as in training) give the headline metrics; when k
    (default `config.eval_samples_k`) is above 1, k sampled replies to the first
    `sampled_examples` problems (default `config.eval_sampled_examples`, None: all) give pass@k
    and maj@k. `loaded` is a `LoadedModel`; `model` replaces its weights (part 06's actor).
    With `run_dir`, a result saved there under the same settings (`checkpoint` included) is
    returned, or its greedy replies reused, and the new result is saved.
    """
    import jax

    if not examples:
        raise ValueError("no examples to evaluate: pass load_splits(config)['test'] (or a slice).")
    plan = _plan(name, config, examples, checkpoint, k, sampled_examples, max_new_tokens)
    if run_dir is not None and (found := _reusable(run_dir, name, examples, plan)) is not None:
        print(f"{name}: reusing the saved evaluation of {len(examples)} problems")
        return found
    saved = None if run_dir is None else _reusable(run_dir, name, examples, {**plan, "k": None})
    limit, k, seed = plan["max_new_tokens"], plan["k"] or 0, config.seed if seed is None else seed
    generate = functools.partial(generate_replies, loaded.model if model is None else model,
                                 loaded.tokenizer, loaded.model_config, config=config,
                                 max_new_tokens=limit, progress=progress)
    prompts = [build_prompt(_field(e, "question")) for e in examples]
    started = time.perf_counter()
    if saved is None:
        replies = generate(prompts, greedy=True, desc=f"{name}: greedy")
    else:
        print(f"{name}: reusing {len(saved.rows)} saved greedy replies")
        replies = [r["response"] for r in saved.rows]
    greedy_seconds = saved.settings["seconds_greedy"] if saved else time.perf_counter() - started
    started = time.perf_counter()
    rounds = [generate(prompts[:plan["sampled_examples"]], greedy=False, seed=seed * 7919 + r,
                       desc=f"{name}: sample {r + 1}/{k}") for r in range(k)]
    samples = [list(s) for s in zip(*rounds)] or None
    counts = token_counts(loaded.tokenizer, replies, limit)
    speed = round(sum(counts) / greedy_seconds, 1) if greedy_seconds else None
    sampling = {"temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k}
    settings = {
        **plan, "decoding": "greedy (temperature 0)", "sampling": sampling if samples else None,
        "seconds_greedy": round(greedy_seconds, 2),
        "seconds_sampled": round(time.perf_counter() - started, 2) if samples else 0.0,
        "tokens_per_second_greedy": speed,
        "profile": config.profile, "model": config.model,
        "hardware": f"{jax.devices()[0].device_kind} × {jax.device_count()}",
    }
    result = evaluate_responses(name, examples, replies, config=config, n_tokens=counts,
                                max_new_tokens=limit, samples=samples, k=plan["k"],
                                settings=settings, seed=seed)
    if run_dir is not None:
        save_results([result], run_dir)
    return result


def evaluate_or_reuse(name: str, model: Any, config: Any, examples: Sequence[Any],
                      run_dir: str | os.PathLike, *, loaded: Any = None, k: int | None = 1,
                      **kwargs: Any) -> EvalResult:
    """`evaluate_model` with the run directory (part 06): `model` is a `LoadedModel`, or weights
    whose tokenizer and config come from `loaded`. k = 1: greedy decoding only."""
    return evaluate_model(model if loaded is None else loaded, examples, config, name=name, k=k,
                          model=None if loaded is None else model, run_dir=run_dir, **kwargs)


def metric_label(metric: str, results: Sequence[EvalResult]) -> str:
    """A metric's name for tables and plots (pass@k with its k)."""
    if metric in ("pass_at_k", "maj_at_k"):
        ks = {r.settings.get("k") for r in results if r.settings.get("k")}
        return f"{metric.split('_')[0]}@{ks.pop() if len(ks) == 1 else 'k'} (sampled)"
    if metric.startswith("reward_"):
        return f"reward: {metric.removeprefix('reward_')}"
    return METRIC_LABELS.get(metric, metric)


def _fmt(metric: str, stats: Mapping[str, float] | None, sign: str = "") -> str:
    """`stats` as "mean [low, high]" in the metric's unit (`sign` "+": a difference), or "–"."""
    mean = (stats or {}).get("difference", (stats or {}).get("mean"))
    if mean is None or math.isnan(mean):
        return "–"
    units = {"length": (1, 0, ""), "reward": (1, 3, "")}
    scale, places, unit = units.get(metric.split("_")[0], (100, 1, " pt" if sign else " %"))
    low, high, spec = scale * stats["low"], scale * stats["high"], f"{sign}.{places}f"
    return f"{scale * mean:{spec}}{unit} [{low:{spec}}, {high:{spec}}]"


def differences(results: Sequence[EvalResult], *, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Paired bootstrap differences, per metric, of each later model against the first and the
    one before it (SFT − baseline, GRPO − SFT) where both scored the same problems (part 07)."""
    diffs = {}
    for j in range(1, len(results)):
        for a, b in ((results[i], results[j]) for i in sorted({0, j - 1})):
            if [r.get("question") for r in a.rows] == [r.get("question") for r in b.rows]:
                diffs[f"{b.name} − {a.name}"] = {
                    m: paired_bootstrap(a.values(m), b.values(m), seed=seed) for m in a.metrics
                    if m in b.metrics}
    return diffs


def markdown_table(results: Sequence[EvalResult], metrics: Sequence[str] | None = None,
                   paired: Mapping[str, Any] | None = None) -> str:
    """The side-by-side table as Markdown (part 07): one column per model with 95 % intervals
    in brackets, then the paired `differences` and the error breakdown."""
    paired = differences(results) if paired is None else paired
    chosen = [m for m in (metrics or TABLE_METRICS) if any(m in r.metrics for r in results)]

    def table(header: list[str], rows: dict[str, list[str]]) -> list[str]:
        lines = [f"| {' | '.join(header)} |", "|---|" + "---|" * (len(header) - 1)]
        return lines + [f"| {label} | {' | '.join(cells)} |" for label, cells in rows.items()]

    lines = table(["metric"] + [f"{r.name} (n={len(r.rows)})" for r in results],
                  {metric_label(m, results): [_fmt(m, r.metrics.get(m)) for r in results]
                   for m in chosen})
    if paired:
        header = ["difference (paired bootstrap)"] + [metric_label(m, results) for m in chosen]
        lines += [""] + table(header, {pair: [_fmt(m, d.get(m), "+") for m in chosen]
                                       for pair, d in paired.items()})
    errors = {c: [str(r.errors.get(c, 0)) for r in results] for c in ERROR_CATEGORIES}
    return "\n".join(lines + [""] + table(["error category"] + [r.name for r in results], errors))


def save_results(results: Sequence[EvalResult], run_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``eval/results.json`` (all rows, metrics and settings, merged with other models saved
    before), ``eval/results.md`` and ``eval/<model>.jsonl`` into the run directory (part 07)."""
    folder = Path(run_dir) / RESULTS_DIR
    merged = {r.name: r for r in load_results(run_dir)} | {r.name: r for r in results}
    known = ("baseline", "sft", "grpo")
    ordered = sorted(merged.values(), key=lambda r: (
        next((i for i, k in enumerate(known) if r.name.lower().startswith(k)), len(known)), r.name))
    paired = differences(ordered)
    payload = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "differences": paired,
               "results": [dataclasses.asdict(r) for r in ordered]}
    text = json.dumps(payload, indent=1, default=str) + "\n"
    table = markdown_table(ordered, paired=paired) + "\n"
    paths = {"json": atomic_write(folder / "results.json", text),
             "markdown": atomic_write(folder / "results.md", table)}
    for result in results:
        lines = "".join(json.dumps(row, default=str) + "\n" for row in result.rows)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", result.name)
        paths[result.name] = atomic_write(folder / f"{safe}.jsonl", lines)
    return paths


def load_results(run_dir: str | os.PathLike) -> list[EvalResult]:
    """The results `save_results` wrote for this run, in table order (empty when none)."""
    path = Path(run_dir) / RESULTS_DIR / "results.json"
    if not path.exists():
        return []
    try:
        return [EvalResult(**r) for r in json.loads(path.read_text()).get("results", [])]
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is unreadable ({error}): move it away and run part 07 again.")


def saved_result(run_dir: str | os.PathLike, name: str) -> EvalResult | None:
    """The result named `name` that `save_results` wrote into this run, if any (part 07)."""
    return {r.name: r for r in load_results(run_dir)}.get(name)


@dataclasses.dataclass(frozen=True)
class TrainedCheckpoint:
    """A LoRA checkpoint written by part 06 (Tunix/Orbax layout ``<step>/model_params``)."""

    stage: str
    step: int
    path: Path  # the model_params folder

    def __str__(self) -> str:
        return f"{self.stage} checkpoint, step {self.step}: {self.path}"


def find_checkpoint(run_dir: str | os.PathLike, stage: str, *,
                    search_kaggle_inputs: bool = True) -> TrainedCheckpoint | None:
    """The newest `stage` ("sft" or "grpo") checkpoint of part 06, or None (part 07): in the run
    directory, else in attached Kaggle inputs (a run's ``checkpoints/<stage>`` up to six folders
    down, e.g. the training notebook's output; a run named like this one first)."""
    from course_utils.checkpoints import checkpoint_dir, latest_checkpoint

    runs = [Path(run_dir)]
    if search_kaggle_inputs and KAGGLE_INPUT.is_dir():
        found = [p.parent.parent for depth in range(6)
                 for p in KAGGLE_INPUT.glob("*/" * depth + f"checkpoints/{stage}")]
        runs += sorted(found, key=lambda run: (run.name != Path(run_dir).name, str(run)))
    for run in runs:
        info = latest_checkpoint(checkpoint_dir(run, stage))
        if info is not None:
            return TrainedCheckpoint(stage, info.step, info.params_path)
    return None


def load_trained_model(config: Any, checkpoint: TrainedCheckpoint | str | os.PathLike,
                       mesh: Any = None, *, base: Any = None) -> Any:
    """A `LoadedModel` with LoRA layers holding the checkpoint's weights (part 07). `base`, a
    loaded base model, is reused without copying its weights; otherwise it is loaded afresh."""
    from course_utils.lora import apply_lora
    from course_utils.model import load_model

    path = checkpoint.path if isinstance(checkpoint, TrainedCheckpoint) else Path(checkpoint)
    base = load_model(config, mesh) if base is None else base
    trained = dataclasses.replace(base, model=apply_lora(base.model, config, mesh))
    load_tunix_lora(trained.model, path)
    trained.source = f"{base.source}; LoRA weights from {path}"
    return trained
