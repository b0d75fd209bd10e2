"""Honest evaluation: metrics with confidence intervals, error analysis, side-by-side tables (part 07).

Everything below the "generation" section works on plain lists of (reply, gold answer) pairs,
so it can be tested and reused without a model:

>>> rows = score_replies(["<reasoning>6*7=42</reasoning><answer>42</answer>"], ["42"])
>>> rows[0]["strict"], rows[0]["error"]
(True, 'correct')

Metrics per reply (each averaged over problems, each with a bootstrap 95 % interval):

* ``strict`` — the answer inside ``<answer>…</answer>`` equals the gold answer, as part 03's
  reward judges it (`rewards.answers_match`: numbers exactly, other answers by math-verify).
* ``lenient`` — the *last number anywhere* in the reply equals the gold answer (the tags are
  ignored; this is what a reader skimming the reply would take as its answer).
* ``format`` — the reply is exactly ``<reasoning>…</reasoning><answer>…</answer>``: full marks
  from part 03's `format_reward`.
* ``partial`` — the tagged answer is a number within 10 % of the gold answer (Tunix's GRPO demo
  calls this partial accuracy).
* ``reward`` and ``reward_<component>`` — the composite reward of part 03 and its components,
  exactly as GRPO pays it: with the question, and the last GRPO step's weights.
* ``length_tokens`` — the reply's length in tokens (re-tokenised), ``length_chars`` in characters.

Every reply also gets exactly one ``error`` category, checked in this order:

======================  =======================================================================
``correct``             ``strict`` is true.
``truncated``           the reply reached the generation limit (``max_new_tokens``, within
                        `TRUNCATION_SLACK`) without ending on a closed ``</answer>``: it ran
                        out of room, or never stopped (an echoed prompt that quotes the tags
                        does not count as closing the answer).
``no_answer``           it ended by itself, has no tagged answer and no number anywhere.
``format_broken``       it ended by itself but is not format-compliant (tags missing, repeated,
                        out of order, empty, or text after ``</answer>``).
``wrong_arithmetic``    format-compliant, wrong answer, and at least one written calculation
                        ``a op b … = c`` in it is false (`rewards.check_arithmetic`).
``wrong_answer``        format-compliant, wrong answer, every checkable calculation right:
                        the set-up or the reasoning is wrong, not the arithmetic.
======================  =======================================================================
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import scipy.stats
from tqdm.auto import tqdm

from course_utils import generate as generation, rewards
from course_utils.data import build_prompt, parse_number
from course_utils.export import load_tunix_lora
from course_utils.files import atomic_write

ERROR_CATEGORIES = ("correct", "truncated", "no_answer", "format_broken", "wrong_arithmetic", "wrong_answer")
# The per-reply 0/1 or real-valued scores that get a mean and a bootstrap interval.
BASE_METRICS = ("strict", "lenient", "format", "partial", "reward")
METRIC_LABELS = {
    "strict": "strict accuracy",
    "lenient": "lenient accuracy",
    "format": "format compliance",
    "partial": "partial accuracy (±10 %)",
    "reward": "composite reward",
    "length_tokens": "mean length (tokens)",
    "length_chars": "mean length (characters)",
}
# A reply counts as having hit the limit when its re-tokenised length is at least
# max_new_tokens − slack: decoding and re-encoding can merge a token or two differently.
TRUNCATION_SLACK = 2
PARTIAL_TOLERANCE = 0.10
RESULTS_DIR = "eval"


# ================================================================================================
# Numbers: part 03's parser and checkers (`rewards.find_numbers`, `answers_match`, `check_arithmetic`)
# ================================================================================================


def last_number(text: Any) -> str | None:
    """The last number anywhere in `text` (normalised, as `rewards.find_numbers` reads it), or None."""
    found = rewards.find_numbers(text)
    return found[-1] if found else None


def within_tolerance(prediction: Any, gold: Any, tolerance: float = PARTIAL_TOLERANCE) -> bool:
    """True when `prediction` is within ±`tolerance` (relative) of `gold`; gold 0 needs exactly 0."""
    x, y = parse_number(str(prediction)), parse_number(str(gold))
    if x is None or y is None:
        return False
    return x == 0 if y == 0 else abs(x - y) <= Fraction(tolerance).limit_denominator(10**6) * abs(y)


# ================================================================================================
# Scoring one reply
# ================================================================================================


def is_truncated(response: Any, n_tokens: int | None, max_new_tokens: int | None) -> bool:
    """True when a reply never stopped (parts 06 and 07): it reached the generation limit
    (`max_new_tokens`, within `TRUNCATION_SLACK` tokens) without ending on a closed
    ``</answer>``. Without a length or a limit nothing is truncated. GRPO's per-step
    truncation rate and evaluation's ``truncated`` category both use this definition."""
    if n_tokens is None or max_new_tokens is None:
        return False
    text = response if isinstance(response, str) else ""
    return n_tokens >= max_new_tokens - TRUNCATION_SLACK and not rewards._text(text).endswith("</answer>")


def score_reply(response: Any, gold: str, *, weights: Mapping[str, float] | None = None, config: Any = None,
                difficulty: str | None = None, n_tokens: int | None = None,
                max_new_tokens: int | None = None, question: str | None = None) -> dict[str, Any]:
    """All scores of one reply against the gold answer, as a flat dict (part 07).

    Read by part 03's reward itself (`rewards.score_batch`, the function behind
    `make_reward_fns`): strict correctness, the tagged answer, the format (full format marks)
    and the composite reward are what GRPO pays for this reply, with the problem's `question`
    (which grounds the arithmetic), its `difficulty`, `config` (default `TrainingConfig()`) and
    `weights` (default: the last GRPO step's, `rewards.final_weights`). Without the question,
    made-up arithmetic is not recognised. `n_tokens` (the reply's length in tokens) and
    `max_new_tokens` (the generation limit) decide ``truncated``; without them a reply is never
    called truncated. Any input is handled: a non-string reply scores as empty, never raises.
    """
    text = response if isinstance(response, str) else ""
    gold = str(gold)
    chosen = dict(weights) if weights else rewards.final_weights(config)
    paid = rewards.score_batch([text], [gold], config, difficulties=[difficulty], weights=chosen,
                               questions=[question])[0]
    tagged = paid.answer if paid.answer and paid.answer.strip() else None
    last = last_number(text)
    calculations = rewards.check_arithmetic(text)
    wrong = [c.text for c in calculations if not c.ok]
    row: dict[str, Any] = {
        "strict": bool(paid.correct),
        "lenient": last is not None and rewards.answers_match(last, gold),
        "format": paid.components["format"] >= 1.0,
        "partial": tagged is not None and within_tolerance(tagged, gold),
        "reward": float(paid.total),
        **{f"reward_{k}": float(v) for k, v in paid.components.items()},
        "length_chars": len(text),
        "answer": tagged,
        "last_number": last,
        "truncated": is_truncated(text, n_tokens, max_new_tokens),
        "calculations": len(calculations),
        "wrong_calculations": wrong[:5],
    }
    if n_tokens is not None:
        row["length_tokens"] = int(n_tokens)
    # The first category that applies, in the order of the module docstring's table.
    checks = (("correct", row["strict"]), ("truncated", row["truncated"]), ("no_answer", tagged is None and last is None),
              ("format_broken", not row["format"]), ("wrong_arithmetic", bool(wrong)))
    row["error"] = next((name for name, hit in checks if hit), "wrong_answer")
    return row


def score_replies(responses: Sequence[Any], golds: Sequence[str], *, weights: Mapping[str, float] | None = None,
                  config: Any = None, difficulties: Sequence[str | None] | None = None,
                  n_tokens: Sequence[int] | None = None, max_new_tokens: int | None = None,
                  questions: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
    """`score_reply` for each (reply, gold) pair (part 07), with its question when given."""
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} replies but {len(golds)} gold answers: they must pair up one to one.")
    for name, values in (("n_tokens", n_tokens), ("difficulties", difficulties), ("questions", questions)):
        if values is not None and len(values) != len(responses):
            raise ValueError(f"{name} has {len(values)} entries for {len(responses)} replies.")
    return [score_reply(r, g, weights=weights, config=config,
                        difficulty=None if difficulties is None else difficulties[i],
                        n_tokens=None if n_tokens is None else n_tokens[i], max_new_tokens=max_new_tokens,
                        question=None if questions is None else questions[i])
            for i, (r, g) in enumerate(zip(responses, golds))]


def error_breakdown(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many replies fall in each error category (all categories present, zeros included)."""
    counts = dict.fromkeys(ERROR_CATEGORIES, 0)
    for row in rows:
        counts[row["error"]] = counts.get(row["error"], 0) + 1
    return counts


# ================================================================================================
# Statistics: bootstrap intervals, paired differences, pass@k, maj@k
# ================================================================================================


def _bootstrap_means(values: np.ndarray, n_resamples: int, confidence: float, seed: int) -> Any:
    """`scipy.stats.bootstrap` of the mean, percentile intervals, seeded: the same inputs always
    give the same interval."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be between 0 and 1, e.g. 0.95")
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples} must be >= 1")
    return scipy.stats.bootstrap((values,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                                 method="percentile", rng=np.random.default_rng(seed))


def bootstrap_ci(values: Any, *, n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its percentile-bootstrap interval (part 07),
    by `scipy.stats.bootstrap` with a seeded generator. NaNs are dropped; no values give
    (nan, nan, nan); one value gives a zero-width interval."""
    column = np.asarray(values, dtype=np.float64).ravel()
    column = column[~np.isnan(column)]
    if column.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(column.mean())
    if column.size == 1:
        return mean, mean, mean
    ci = _bootstrap_means(column, n_resamples, confidence, seed).confidence_interval
    return mean, float(min(ci.low, mean)), float(max(ci.high, mean))


def paired_bootstrap(before: Any, after: Any, *, n_resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, float]:
    """The difference mean(after) − mean(before) on the *same* problems, with a paired bootstrap
    interval: `paired_bootstrap(sft_scores, grpo_scores)` is GRPO's gain over SFT.

    Each resample draws problems (not replies of one model), so the problem-to-problem variation
    both models share cancels out. `p_not_better` is the share of resamples in which `after` is
    not better than `before` (≈ a one-sided p-value). Pairs with a NaN on either side are dropped.
    """
    x, y = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"before and after must be 1-D scores of the same problems, got shapes {x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    d = y[keep] - x[keep]
    if d.size == 0:
        return {"difference": math.nan, "low": math.nan, "high": math.nan, "p_not_better": math.nan, "n": 0}
    diff = float(d.mean())
    if d.size == 1:
        return {"difference": diff, "low": diff, "high": diff, "p_not_better": float(diff <= 0), "n": 1}
    result = _bootstrap_means(d, n_resamples, confidence, seed)
    ci = result.confidence_interval
    return {"difference": diff, "low": float(min(ci.low, diff)), "high": float(max(ci.high, diff)),
            "p_not_better": float(np.mean(result.bootstrap_distribution <= 0)), "n": int(d.size)}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021): the chance that
    at least one of k samples drawn without replacement is correct, 1 − C(n−c, k) / C(n, k),
    computed as a stable product."""
    if not (isinstance(n, (int, np.integer)) and isinstance(c, (int, np.integer)) and isinstance(k, (int, np.integer))):
        raise TypeError("n, c and k must be integers")
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer by value (``"18"`` and ``"18.00"`` are one vote), ignoring None;
    a tie goes to the answer seen first. None when no sample answered."""
    tally: dict[Any, list] = {}
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        value = parse_number(str(answer))
        key = ("v", value) if value is not None else ("s", " ".join(str(answer).split()))
        if key not in tally:
            tally[key] = [0, index, answer]
        tally[key][0] += 1
    if not tally:
        return None
    return max(tally.values(), key=lambda t: (t[0], -t[1]))[2]


def sampled_scores(samples: Sequence[Sequence[str]], golds: Sequence[str], k: int | None = None) -> list[dict[str, Any]]:
    """Per problem, from its sampled replies: pass@k (unbiased), maj@k (majority of the tagged
    answers is right) and pass@1 (share of correct samples) (part 07)."""
    if len(samples) != len(golds):
        raise ValueError(f"{len(samples)} sample lists but {len(golds)} gold answers")
    out = []
    for replies, gold in zip(samples, golds):
        replies = list(replies)
        n = len(replies)
        if n == 0:
            raise ValueError("every problem needs at least one sampled reply")
        kk = n if k is None else k
        if not 1 <= kk <= n:
            raise ValueError(f"k={kk} must be between 1 and the number of samples ({n})")
        answers = [rewards.extract_answer(r if isinstance(r, str) else "") for r in replies]
        correct = [rewards.answers_match(a, str(gold)) for a in answers]
        vote = majority_answer(answers[:kk])
        out.append({"pass_at_k": pass_at_k(n, sum(correct), kk),
                    "maj_at_k": vote is not None and rewards.answers_match(vote, gold),
                    "pass_at_1": sum(correct) / n, "k": kk, "n": n, "majority": vote,
                    "correct_samples": sum(correct)})
    return out


# ================================================================================================
# Results of one model
# ================================================================================================


@dataclasses.dataclass
class EvalResult:
    """One model's evaluation (part 07): per-problem rows, metrics with intervals, settings.

    `rows[i]` holds the question, gold answer, reply and every score of problem i (and its
    sampled replies' scores when sampled decoding ran). `metrics[name]` is
    ``{"mean", "low", "high", "n"}``; `errors` counts the error categories.
    """

    name: str
    rows: list[dict[str, Any]]
    metrics: dict[str, dict[str, float]]
    errors: dict[str, int]
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def values(self, metric: str) -> np.ndarray:
        """The per-problem values of `metric` (NaN where a problem lacks it), in problem order."""
        source = [r.get("sampled", {}) if metric in ("pass_at_k", "maj_at_k", "pass_at_1") else r for r in self.rows]
        return np.array([float(s[metric]) if metric in s and s[metric] is not None else math.nan
                         for s in source], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvalResult":
        return cls(name=data["name"], rows=list(data["rows"]), metrics=dict(data["metrics"]),
                   errors=dict(data["errors"]), settings=dict(data.get("settings", {})))


def metric_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics present in `rows`, in display order."""
    names = [m for m in BASE_METRICS if rows and m in rows[0]]
    names += sorted({k for r in rows for k in r if k.startswith("reward_")})
    names += [m for m in ("length_tokens", "length_chars") if rows and m in rows[0]]
    if any("sampled" in r for r in rows):
        names += ["pass_at_1", "pass_at_k", "maj_at_k"]
    return names


def summarize(name: str, rows: list[dict[str, Any]], *, settings: Mapping[str, Any] | None = None,
              n_resamples: int = 2000, seed: int = 0) -> EvalResult:
    """Means and bootstrap 95 % intervals of every metric in `rows` (part 07)."""
    result = EvalResult(name, rows, {}, error_breakdown(rows), dict(settings or {}))
    for metric in metric_names(rows):
        values = result.values(metric)
        mean, low, high = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
        result.metrics[metric] = {"mean": mean, "low": low, "high": high, "n": int(np.sum(~np.isnan(values)))}
    return result


def evaluate_responses(name: str, examples: Sequence[Any], responses: Sequence[str], *,
                       weights: Mapping[str, float] | None = None, config: Any = None,
                       n_tokens: Sequence[int] | None = None,
                       max_new_tokens: int | None = None, samples: Sequence[Sequence[str]] | None = None,
                       k: int | None = None, settings: Mapping[str, Any] | None = None,
                       seed: int = 0) -> EvalResult:
    """Score replies already generated for `examples` (objects with `.question` and `.answer`, or
    dicts with those keys) and summarise them (part 07). `samples[i]` are sampled replies to
    problem i for pass@k / maj@k (may cover only the first problems)."""
    questions = [_field(e, "question") for e in examples]
    golds = [str(_field(e, "answer")) for e in examples]
    difficulties = [_field(e, "difficulty", None) for e in examples]
    rows = score_replies(responses, golds, weights=weights, config=config, difficulties=difficulties,
                         n_tokens=n_tokens, max_new_tokens=max_new_tokens, questions=questions)
    for row, example, question, gold, reply in zip(rows, examples, questions, golds, responses):
        row.update(question=question, gold=gold, response=reply if isinstance(reply, str) else "",
                   difficulty=_field(example, "difficulty", None))
    if samples is not None:
        settings = {"k": k or (len(samples[0]) if samples else None), **dict(settings or {})}
        if len(samples) > len(rows):
            raise ValueError(f"samples cover {len(samples)} problems but there are only {len(rows)}")
        for row, scored, replies in zip(rows, sampled_scores(samples, golds[: len(samples)], k=k), samples):
            row["sampled"] = {**scored, "replies": list(replies)}
    return summarize(name, rows, settings=settings, seed=seed)


def _field(item: Any, name: str, default: Any = ...) -> Any:
    if isinstance(item, Mapping):
        if name in item:
            return item[name]
    elif hasattr(item, name):
        return getattr(item, name)
    if default is ...:
        raise ValueError(f"each example needs a {name!r} (an Example from course_utils.data, or a dict)")
    return default


# ================================================================================================
# Generation (Tunix sampler through course_utils.generate)
# ================================================================================================


def _unpack(loaded_or_model: Any, tokenizer: Any, model_config: Any) -> tuple[Any, Any, Any]:
    if hasattr(loaded_or_model, "model") and hasattr(loaded_or_model, "tokenizer"):
        return (loaded_or_model.model, tokenizer or loaded_or_model.tokenizer,
                model_config or getattr(loaded_or_model, "model_config", None))
    if tokenizer is None or model_config is None:
        raise ValueError("pass a LoadedModel, or a model together with its tokenizer and model_config")
    return loaded_or_model, tokenizer, model_config


def generate_replies(model: Any, tokenizer: Any, model_config: Any, prompts: Sequence[str], config: Any, *,
                     greedy: bool = True, seed: int = 0, batch_size: int | None = None,
                     max_new_tokens: int | None = None, desc: str = "generating", progress: bool = True) -> list[str]:
    """Replies to `prompts` (in their order) in batches of `config.eval_batch_size` through
    `generate.generate`.

    Prompts of similar length share a batch: a batch decodes until its longest reply ends, and
    a short question usually gets a short answer, so this saves about a third of the decoding
    (measured on the cpu profile's 200 held-out problems after SFT: 19,472 instead of 29,264
    decoded tokens).
    """
    size = batch_size or config.eval_batch_size
    counts = generation.prompt_token_counts(tokenizer, list(prompts))
    order = sorted(range(len(prompts)), key=lambda i: counts[i])
    out: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    try:
        for b, start in enumerate(range(0, len(order), size)):
            ids = order[start:start + size]
            replies = generation.generate(model, tokenizer, model_config, [prompts[i] for i in ids], config, greedy=greedy,
                                          seed=generation.step_seed(seed, b), max_new_tokens=max_new_tokens, batch_size=size)
            for i, reply in zip(ids, replies):
                out[i] = reply
            bar.update(len(ids))
    finally:
        bar.close()
    return out


def token_counts(tokenizer: Any, texts: Sequence[str], limit: int | None = None) -> list[int]:
    """Tokens per reply, re-tokenised without BOS, capped at `limit` (a reply decodes to text that
    can encode a token or two longer; it never had more than the limit): the length
    `is_truncated` reads, in GRPO's step metrics, in evaluation and in prompt filtering alike."""
    counts = [len(tokenizer.encode(t)) if t else 0 for t in texts]
    return counts if limit is None else [min(n, limit) for n in counts]


def evaluate_model(loaded_or_model: Any, tokenizer: Any = None, model_config: Any = None,
                   examples: Sequence[Any] = (), config: Any = None, *, name: str = "model",
                   k: int | None = None, sampled_examples: int | None = None, batch_size: int | None = None,
                   max_new_tokens: int | None = None, seed: int | None = None, weights: Mapping[str, float] | None = None,
                   checkpoint: Any = None, progress: bool = True, run_dir: str | os.PathLike | None = None) -> EvalResult:
    """Generate and score `examples` with one model (part 07).

    Greedy decoding (temperature 0) for the headline metrics, as the Kaggle Tunix competition
    judged; then, when k = `k` or `config.eval_samples_k` is above 1, k sampled replies (with
    `config.temperature`, `top_p`, `top_k`) for the first `sampled_examples` problems (default
    `config.eval_sampled_examples`; None there means all) for pass@k and maj@k. Prompts are
    `course_utils.data.build_prompt`, as in training. `checkpoint` (what the weights came from)
    is recorded in the settings, so `reusable_result` can recognise the same evaluation later.
    With `run_dir`, greedy replies saved there for the same model, checkpoint, problems and
    lengths (by part 06, say) are reused, and only the sampled replies are generated.
    The composite reward is what GRPO paid (with the question), with `weights`, by default
    the last GRPO step's (`rewards.final_weights`).
    """
    if config is None:
        raise ValueError("evaluate_model needs the run's TrainingConfig (config=...).")
    if not examples:
        raise ValueError("no examples to evaluate: pass load_splits(config)['test'] (or a slice of it).")
    model, tokenizer, model_config = _unpack(loaded_or_model, tokenizer, model_config)
    seed = config.seed if seed is None else seed
    k = config.eval_samples_k if k is None else int(k)
    limit = config.max_generation_length if max_new_tokens is None else int(max_new_tokens)
    prompts = [build_prompt(_field(e, "question")) for e in examples]
    started = time.perf_counter()
    saved = None if run_dir is None else _saved_matching(run_dir, name, config, examples, {
        "max_new_tokens": limit, "checkpoint": None if checkpoint is None else str(checkpoint)})
    if saved is None:
        replies = generate_replies(model, tokenizer, model_config, prompts, config, greedy=True, batch_size=batch_size,
                                   max_new_tokens=limit, desc=f"{name}: greedy", progress=progress)
        greedy_seconds = time.perf_counter() - started
    else:
        replies = [r["response"] for r in saved.rows]
        print(f"{name}: reusing {len(replies)} saved greedy replies")
        greedy_seconds = float(saved.settings.get("seconds_greedy") or 0.0)
    counts = token_counts(tokenizer, replies, limit)
    samples = None
    sampled_seconds = 0.0
    if sampled_examples is None:
        sampled_examples = getattr(config, "eval_sampled_examples", None)
    if k > 1:
        m = len(examples) if sampled_examples is None else max(0, min(int(sampled_examples), len(examples)))
        if m:
            started = time.perf_counter()
            per_round = [generate_replies(model, tokenizer, model_config, prompts[:m], config, greedy=False,
                                          seed=seed * 7919 + r, batch_size=batch_size, max_new_tokens=limit,
                                          desc=f"{name}: sample {r + 1}/{k}", progress=progress)
                         for r in range(k)]
            samples = [list(s) for s in zip(*per_round)]
            sampled_seconds = time.perf_counter() - started
    settings = {
        "decoding": "greedy (temperature 0)", "max_new_tokens": limit, "examples": len(examples),
        "k": k if samples else None, "sampled_examples": len(samples) if samples else 0,
        "sampling": {"temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k} if samples else None,
        "seconds_greedy": round(greedy_seconds, 2), "seconds_sampled": round(sampled_seconds, 2),
        "tokens_per_second_greedy": round(sum(counts) / greedy_seconds, 1) if greedy_seconds > 0 else None,
        "profile": getattr(config, "profile", None), "model": getattr(config, "model", None),
        "config_fingerprint": config.fingerprint(config.evaluation_fields(name)) if hasattr(config, "fingerprint") else None,
        "hardware": hardware_description(),
        "checkpoint": None if checkpoint is None else str(checkpoint),
    }
    return evaluate_responses(name, examples, replies, weights=weights, config=config, n_tokens=counts, max_new_tokens=limit, samples=samples, k=k if samples else None,
                              settings=settings, seed=seed)


def saved_result(run_dir: str | os.PathLike, name: str) -> EvalResult | None:
    """The result named `name` that `save_results` wrote into this run, if any (part 07)."""
    return {r.name: r for r in load_results(run_dir)}.get(name)


def _saved_matching(run_dir: str | os.PathLike, name: str, config: Any, examples: Sequence[Any],
                    want: Mapping[str, Any]) -> EvalResult | None:
    """The saved result of `name` on the same problems under the same config whose settings
    hold the values in `want`; else None."""
    saved = saved_result(run_dir, name)
    want = {"config_fingerprint": config.fingerprint(config.evaluation_fields(name)), **want}
    if saved is None or any(saved.settings.get(key) != value for key, value in want.items()):
        return None
    return saved if [r.get("question") for r in saved.rows] == [_field(e, "question") for e in examples] else None


def reusable_result(run_dir: str | os.PathLike, name: str, config: Any, examples: Sequence[Any], *,
                    checkpoint: Any = None, k: int | None = None, sampled_examples: int | None = None,
                    max_new_tokens: int | None = None) -> EvalResult | None:
    """The result of `name` saved by an earlier run of part 07, if it was made under exactly these
    settings (same config fingerprint, problems, k, lengths and checkpoint); else None."""
    k = config.eval_samples_k if k is None else int(k)
    if sampled_examples is None:
        sampled_examples = getattr(config, "eval_sampled_examples", None)
    m = len(examples) if sampled_examples is None else max(0, min(int(sampled_examples), len(examples)))
    return _saved_matching(run_dir, name, config, examples, {
        "examples": len(examples), "k": k if k > 1 and m else None, "sampled_examples": m if k > 1 else 0,
        "max_new_tokens": config.max_generation_length if max_new_tokens is None else int(max_new_tokens),
        "checkpoint": None if checkpoint is None else str(checkpoint)})


def hardware_description() -> str:
    """e.g. "cpu × 1 (x86_64, 2 cores)" or "TPU v5 lite × 8" — for result tables and model cards."""
    import platform

    try:
        import jax

        devices = jax.devices()
        kind = devices[0].device_kind
        text = f"{kind} × {len(devices)}"
    except Exception:  # JAX missing or no backend
        text = "unknown accelerator"
    if "cpu" in text.lower():
        text += f" ({platform.machine()}, {os.cpu_count()} cores)"
    return text


# ================================================================================================
# Several models side by side
# ================================================================================================

TABLE_METRICS = ("strict", "lenient", "format", "partial", "reward", "length_tokens", "pass_at_k", "maj_at_k")


def _fmt(metric: str, stats: Mapping[str, float] | None) -> str:
    if not stats or stats.get("mean") is None or (isinstance(stats["mean"], float) and math.isnan(stats["mean"])):
        return "–"
    mean, low, high = stats["mean"], stats["low"], stats["high"]
    if metric.startswith("length"):
        return f"{mean:.0f} [{low:.0f}, {high:.0f}]"
    if metric.startswith("reward"):
        return f"{mean:.3f} [{low:.3f}, {high:.3f}]"
    return f"{100 * mean:.1f} % [{100 * low:.1f}, {100 * high:.1f}]"


def metric_label(metric: str, results: Sequence[EvalResult]) -> str:
    """A metric's name for tables and plots (pass@k with its k)."""
    if metric in ("pass_at_k", "maj_at_k"):
        ks = {r.settings.get("k") for r in results if r.settings.get("k")}
        k = ks.pop() if len(ks) == 1 else "k"
        return f"{'pass' if metric == 'pass_at_k' else 'maj'}@{k} (sampled)"
    if metric.startswith("reward_"):
        return f"reward: {metric[len('reward_'):]}"
    return METRIC_LABELS.get(metric, metric)


def comparison(results: Sequence[EvalResult], *, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Every model's metrics side by side, plus paired differences of each later model against
    the first and against the one before it (e.g. SFT − baseline, GRPO − SFT), as JSON-ready data."""
    if not results:
        raise ValueError("no results to compare")
    metrics: list[str] = []
    for r in results:
        metrics += [m for m in metric_names(r.rows) if m not in metrics]
    table = {r.name: {m: r.metrics.get(m) for m in metrics} for r in results}
    diffs: dict[str, dict[str, Any]] = {}
    pairs = sorted({(0, j) for j in range(1, len(results))} | {(j - 1, j) for j in range(2, len(results))},
                   key=lambda p: (p[1], p[0]))
    for a, b in ((results[i], results[j]) for i, j in pairs):
        if [r.get("question") for r in a.rows] != [r.get("question") for r in b.rows]:
            continue  # not the same problems: no paired difference
        diffs[f"{b.name} − {a.name}"] = {m: paired_bootstrap(a.values(m), b.values(m), n_resamples=n_resamples, seed=seed)
                                         for m in metrics if m in a.metrics and m in b.metrics}
    return {"models": [r.name for r in results], "metrics": metrics, "table": table, "differences": diffs,
            "errors": {r.name: r.errors for r in results}, "settings": {r.name: r.settings for r in results}}


def markdown_table(results: Sequence[EvalResult], metrics: Sequence[str] | None = None,
                   data: Mapping[str, Any] | None = None) -> str:
    """The side-by-side table as Markdown: one column per model, 95 % intervals in brackets,
    then the paired differences and the error breakdown (part 07)."""
    data = data or comparison(results)
    chosen = [m for m in (metrics or TABLE_METRICS) if m in data["metrics"]]
    names = data["models"]
    n = {r.name: len(r.rows) for r in results}
    lines = ["| metric | " + " | ".join(f"{name} (n={n[name]})" for name in names) + " |",
             "|---|" + "---|" * len(names)]
    for m in chosen:
        lines.append(f"| {metric_label(m, results)} | " + " | ".join(_fmt(m, data["table"][name].get(m)) for name in names) + " |")
    if data["differences"]:
        lines += ["", "| difference (paired bootstrap) | " + " | ".join(metric_label(m, results) for m in chosen) + " |",
                  "|---|" + "---|" * len(chosen)]
        for pair, per_metric in data["differences"].items():
            cells = []
            for m in chosen:
                d = per_metric.get(m)
                if d is None:
                    cells.append("–")
                    continue
                scale, unit, places = ((1, "", 3) if m.startswith("reward") else (1, "", 0) if m.startswith("length")
                                       else (100, " pt", 1))
                cells.append(f"{scale * d['difference']:+.{places}f}{unit} [{scale * d['low']:+.{places}f}, "
                             f"{scale * d['high']:+.{places}f}]" if not math.isnan(d["difference"]) else "–")
            lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    lines += ["", "| error category | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for category in ERROR_CATEGORIES:
        lines.append(f"| {category} | " + " | ".join(str(data["errors"][name].get(category, 0)) for name in names) + " |")
    return "\n".join(lines)


def before_after(before: EvalResult, after: EvalResult, n: int = 3, *, width: int = 400) -> list[dict[str, Any]]:
    """A few problems whose outcome changed between two models (fixed first, then broken, then
    the largest reward changes), with both replies and both scores (part 07)."""
    if len(before.rows) != len(after.rows):
        raise ValueError("before and after must be evaluated on the same problems")
    pairs = list(zip(before.rows, after.rows))
    order = sorted(range(len(pairs)), key=lambda i: (
        -(int(pairs[i][1]["strict"]) - int(pairs[i][0]["strict"])),
        -(int(pairs[i][1]["format"]) - int(pairs[i][0]["format"])),
        -abs(pairs[i][1]["reward"] - pairs[i][0]["reward"]), i))
    out = []
    for i in order[:n]:
        a, b = pairs[i]
        out.append({"index": i, "question": a["question"], "gold": a["gold"],
                    before.name: {"reply": _clip(a["response"], width), "strict": a["strict"], "format": a["format"],
                                  "reward": round(a["reward"], 3), "error": a["error"]},
                    after.name: {"reply": _clip(b["response"], width), "strict": b["strict"], "format": b["format"],
                                 "reward": round(b["reward"], 3), "error": b["error"]}})
    return out


def format_replies(result: EvalResult, n: int = 3, *, width: int = 400) -> str:
    """The first `n` problems of one model with its replies and scores, as readable text."""
    lines = []
    for i, row in enumerate(result.rows[:n]):
        lines += [f"### Problem {i} (gold answer {row['gold']})", row["question"].strip(), "",
                  f"**{result.name}** — strict {'✓' if row['strict'] else '✗'}, format {'✓' if row['format'] else '✗'}, "
                  f"reward {row['reward']:.3f}, {row['error']}",
                  "    " + (_clip(row["response"], width).replace("\n", "\n    ") or "(empty reply)"), ""]
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_before_after(items: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str:
    """`before_after` as readable text for a notebook cell."""
    blocks = []
    for item in items:
        lines = [f"### Problem {item['index']} (gold answer {item['gold']})", item["question"].strip(), ""]
        for name in names:
            s = item[name]
            lines.append(f"**{name}** — strict {'✓' if s['strict'] else '✗'}, format {'✓' if s['format'] else '✗'}, "
                         f"reward {s['reward']:.3f}, {s['error']}")
            lines.append("    " + (s["reply"].replace("\n", "\n    ") or "(empty reply)"))
            lines.append("")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


# ================================================================================================
# Saving and plots
# ================================================================================================


def results_dir(run_dir: str | os.PathLike) -> Path:
    path = Path(run_dir) / RESULTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Fraction):
        return str(value)
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def save_results(results: Sequence[EvalResult], run_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``eval/results.json`` (everything, per-problem rows included), ``eval/results.md``
    (the table) and ``eval/<model>.jsonl`` (one row per problem) into the run directory (part 07).
    Existing files are replaced atomically; other models' results already saved are kept in
    results.json unless a result of the same name replaces them."""
    folder = results_dir(run_dir)
    path_json = folder / "results.json"
    saved: dict[str, Any] = {}
    if path_json.exists():
        try:
            saved = {m["name"]: m for m in json.loads(path_json.read_text()).get("results", [])}
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError):
            saved = {}
    for result in results:
        saved[result.name] = result.to_dict()
    ordered = [EvalResult.from_dict(saved[name]) for name in _ordered_names(saved)]
    data = comparison(ordered)
    payload = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "comparison": data,
               "results": [r.to_dict() for r in ordered]}
    atomic_write(path_json, json.dumps(payload, indent=1, default=_json_default, allow_nan=True) + "\n")
    atomic_write(folder / "results.md", markdown_table(ordered, data=data) + "\n")
    paths = {"json": path_json, "markdown": folder / "results.md"}
    for result in results:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", result.name)
        lines = "".join(json.dumps(row, default=_json_default, allow_nan=True) + "\n" for row in result.rows)
        atomic_write(folder / f"{safe}.jsonl", lines)
        paths[result.name] = folder / f"{safe}.jsonl"
    return paths


_KNOWN_ORDER = ("baseline", "sft", "grpo")


def _ordered_names(saved: Mapping[str, Any]) -> list[str]:
    def key(name: str) -> tuple[int, str]:
        low = name.lower()
        rank = next((i for i, k in enumerate(_KNOWN_ORDER) if low.startswith(k)), len(_KNOWN_ORDER))
        return rank, name
    return sorted(saved, key=key)


def load_results(run_dir: str | os.PathLike) -> list[EvalResult]:
    """The results `save_results` wrote for this run, in table order (empty when none)."""
    path = Path(run_dir) / RESULTS_DIR / "results.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return [EvalResult.from_dict(r) for r in data.get("results", [])]


# ================================================================================================
# Finding and loading trained checkpoints
# ================================================================================================

KAGGLE_INPUT = Path("/kaggle/input")


@dataclasses.dataclass(frozen=True)
class TrainedCheckpoint:
    """A LoRA checkpoint written by part 06 (Tunix/Orbax layout ``<step>/model_params``)."""

    stage: str
    step: int
    path: Path  # the model_params folder

    def __str__(self) -> str:
        return f"{self.stage} checkpoint, step {self.step}: {self.path}"


def _input_checkpoint_roots(base: Path, stage: str, profile: str, max_depth: int = 6) -> list[Path]:
    """``…/checkpoints/<stage>`` folders under attached inputs (at most `max_depth` levels deep),
    those under a folder named like this run's (``runs/<profile>``) first."""
    found = []
    base_depth = len(base.parts)
    for folder, subdirs, _ in os.walk(base):
        here = Path(folder)
        if len(here.parts) - base_depth >= max_depth:
            subdirs[:] = []
        if here.name == "checkpoints" and (here / stage).is_dir():
            found.append(here / stage)
            subdirs[:] = []
    return sorted(found, key=lambda p: (p.parent.parent.name != profile, str(p)))


def find_checkpoint(run_dir: str | os.PathLike, stage: str, *, search_kaggle_inputs: bool = True) -> TrainedCheckpoint | None:
    """The newest `stage` ("sft" or "grpo") checkpoint of part 06, or None (part 07).

    Looks in ``<run_dir>/checkpoints/<stage>`` first (GRPO keeps its policy under ``actor/``),
    then in attached Kaggle inputs (``/kaggle/input/…/checkpoints/<stage>``, up to six levels
    down, those of a run folder named like this one first), e.g. the output of the training
    notebook added with Add Input.
    """
    from course_utils.checkpoints import checkpoint_dir, latest_checkpoint

    roots = [checkpoint_dir(run_dir, stage)]
    if search_kaggle_inputs and KAGGLE_INPUT.is_dir():
        roots += [r / "actor" if stage == "grpo" else r
                  for r in _input_checkpoint_roots(KAGGLE_INPUT, stage, Path(run_dir).name)]
    for root in roots:
        info = latest_checkpoint(root)
        if info is not None:
            return TrainedCheckpoint(stage, info.step, info.params_path)
    return None


def evaluate_or_reuse(name: str, model: Any, config: Any, examples: Sequence[Any], run_dir: str | os.PathLike, *,
                      loaded: Any = None, checkpoint: Any = None, k: int = 1, **kwargs: Any) -> EvalResult:
    """The saved evaluation `name` if one was made under exactly these settings, else a new one,
    saved into the run directory (parts 06 and 07). `model` is a LoadedModel, or a model whose
    tokenizer and config come from `loaded`; `checkpoint` names what its weights came from, so a
    newer checkpoint is never mistaken for an old result. k = 1: greedy decoding only."""
    found = reusable_result(run_dir, name, config, examples, checkpoint=checkpoint, k=k,
                            max_new_tokens=kwargs.get("max_new_tokens"), sampled_examples=kwargs.get("sampled_examples"))
    if found is not None:
        print(f"{name}: reusing the saved evaluation of {len(examples)} problems")
        return found
    tokenizer = getattr(loaded, "tokenizer", None)
    model_config = getattr(loaded, "model_config", None)
    result = evaluate_model(model, tokenizer, model_config, examples, config, name=name, k=k,
                            checkpoint=checkpoint, run_dir=run_dir, **kwargs)
    save_results([result], run_dir)
    return result


def load_trained_model(config: Any, checkpoint: TrainedCheckpoint | str | os.PathLike, mesh: Any = None, *,
                       base: Any = None) -> Any:
    """A `LoadedModel` with LoRA layers holding the checkpoint's LoRA weights (part 07).

    `base`, an already loaded base model (`load_model`'s result), is reused without copying its
    weights (LoRA wraps them); otherwise the base model is loaded afresh.
    """
    from course_utils.lora import apply_lora
    from course_utils.model import load_model

    path = checkpoint.path if isinstance(checkpoint, TrainedCheckpoint) else Path(checkpoint)
    if base is None:
        if mesh is None:
            from course_utils.model import model_mesh

            mesh = model_mesh(config)
        base = load_model(config, mesh)
    trained = dataclasses.replace(base, model=apply_lora(base.model, config, mesh))
    load_tunix_lora(trained.model, path)
    trained.source = f"{base.source}; LoRA weights from {path}"
    return trained
