"""Prompts GRPO can learn from: pass-rate filtering with the SFT policy's own samples (part 06).

A GRPO group carries a correctness signal only when its G replies disagree, which happens
with probability 1 − pᴳ − (1 − p)ᴳ for a prompt the policy solves with probability p. A prompt
it always fails (p = 0) or always solves (p = 1) gives every reply the same correctness, so
only format and style move the update. So before GRPO the course samples k replies per
candidate prompt, at the rollout temperature, with the policy GRPO starts from, and keeps the
prompts solved *sometimes*: `filter_pass_rate_min ≤ p̂ ≤ filter_pass_rate_max`. Tunix 0.1.7
has no dynamic sampling (DAPO's `dynamic_sampling` is a TODO there), so this happens offline.

The same samples are each prompt's "before" measurement: after GRPO, `measure_pass_rates`
again (another seed) gives p̂ after, and `pass_rate_gain` pairs them prompt by prompt.

Samples are cached as JSON lines in ``<run>/pass_rates/<name>-<fingerprint>.jsonl``, one line
per prompt, written as each batch finishes: a killed measurement continues where it stopped
and nothing measured is lost. Each reply is scored by `evaluation.score_reply`, the scorer
evaluation uses (strict correctness, format, truncation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from course_utils.data import build_prompt
from course_utils.evaluation import paired_bootstrap, score_reply, token_counts
from course_utils.files import atomic_write
from course_utils.generate import generate, step_seed

PASS_RATES_DIR = "pass_rates"


@dataclasses.dataclass(frozen=True)
class PassRate:
    """k sampled replies to one prompt, scored: p̂ = correct / k (part 06)."""

    question: str
    answer: str
    difficulty: str | None
    correct: tuple[bool, ...]
    formatted: tuple[bool, ...]
    truncated: tuple[bool, ...]
    lengths: tuple[int, ...]
    replies: tuple[str, ...] = ()

    @property
    def k(self) -> int:
        return len(self.correct)

    @property
    def pass_rate(self) -> float:
        return sum(self.correct) / self.k if self.k else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PassRate":
        return cls(data["question"], str(data["answer"]), data.get("difficulty"), tuple(data["correct"]),
                   tuple(data["formatted"]), tuple(data["truncated"]), tuple(data["lengths"]),
                   tuple(data.get("replies", ())))


def difficulties(config: Any) -> tuple[str, ...]:
    """The difficulties pass-rate filtering draws candidates from (`config.filter_difficulties`)."""
    value = config.filter_difficulties
    return tuple(d.strip() for d in value.split(",") if d.strip()) if isinstance(value, str) else tuple(value)


def candidate_prompts(examples: Sequence[Any], config: Any, n: int | None = None, *, skip: int = 0) -> list[Any]:
    """`n` (default `config.filter_candidates`) candidate prompts of the filter's difficulties, in
    a seeded order; `skip` leaves out the first ones (the proof draws disjoint held-out
    candidates as the ones after the training candidates)."""
    wanted = set(difficulties(config))
    pool = [e for e in examples if getattr(e, "difficulty", None) in wanted]
    if not pool:
        raise ValueError(
            f"no training example has a difficulty in filter_difficulties={config.filter_difficulties!r}; "
            "use easy, medium and/or hard, comma-separated"
        )
    random.Random(config.seed + 17).shuffle(pool)
    n = config.filter_candidates if n is None else int(n)
    chosen = pool[skip:skip + n]
    if len(chosen) < n:
        print(f"filter: only {len(chosen)} candidates left after skipping {skip} (asked for {n})")
    return chosen


def cache_path(directory: str | os.PathLike, name: str, config: Any, k: int, seed: int, checkpoint: Any) -> Path:
    """The cache file of one measurement: its name plus a hash of everything the samples depend on."""
    fields = ("model", "param_dtype", "max_prompt_length", "max_generation_length", "cache_size", "temperature",
              "top_p", "top_k", "eval_batch_size")
    key = json.dumps({"config": {f: getattr(config, f) for f in fields}, "k": k, "seed": seed,
                      "checkpoint": None if checkpoint is None else str(checkpoint)}, sort_keys=True)
    return Path(directory) / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsonl"


def read_cache(path: str | os.PathLike) -> dict[str, PassRate]:
    """The prompts already measured in a cache file, by question (a torn last line is ignored)."""
    path = Path(path)
    out: dict[str, PassRate] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rate = PassRate.from_dict(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut off by a kill: that prompt is measured again
        out[rate.question] = rate
    return out


def score_samples(example: Any, replies: Sequence[str], tokenizer: Any, config: Any) -> PassRate:
    """Score k replies to one prompt with evaluation's scorer: correctness, format, truncation."""
    limit = config.max_generation_length
    counts = token_counts(tokenizer, list(replies), limit)
    rows = [score_reply(r, str(example.answer), config=config, difficulty=getattr(example, "difficulty", None),
                        n_tokens=n, max_new_tokens=limit) for r, n in zip(replies, counts)]
    return PassRate(example.question, str(example.answer), getattr(example, "difficulty", None),
                    tuple(bool(r["strict"]) for r in rows), tuple(bool(r["format"]) for r in rows),
                    tuple(bool(r["truncated"]) for r in rows), tuple(counts), tuple(replies))


def measure_pass_rates(model: Any, tokenizer: Any, model_config: Any, examples: Sequence[Any], config: Any,
                       directory: str | os.PathLike, *, name: str, k: int | None = None, seed: int | None = None,
                       checkpoint: Any = None, progress: bool = True) -> list[PassRate]:
    """k replies per prompt sampled at the rollout temperature (`config.temperature`, `top_p`,
    `top_k`, `max_generation_length`), scored, cached in `directory` (part 06).

    Each batch holds `config.eval_batch_size // k` prompts, each repeated k times, sampled with
    one seed per batch; its prompts are appended to the cache as soon as it is done, so a
    re-run skips them. `checkpoint` names the weights (a new one means a new cache file).
    Returns one `PassRate` per example, in the order given.
    """
    k = config.filter_samples_k if k is None else int(k)
    seed = config.seed if seed is None else int(seed)
    if k < 1:
        raise ValueError(f"k={k} must be >= 1 samples per prompt")
    path = cache_path(directory, name, config, k, seed, checkpoint)
    done = read_cache(path)
    if path.exists() and not path.read_text().endswith("\n"):  # torn by a kill: keep only whole lines
        atomic_write(path, "".join(json.dumps(r.to_dict()) + "\n" for r in done.values()))
    todo = [e for e in dict((e.question, e) for e in examples).values() if e.question not in done]
    per_batch = max(1, config.eval_batch_size // k)
    batches = [todo[i:i + per_batch] for i in range(0, len(todo), per_batch)]
    if todo:
        print(f"{name}: sampling {k} replies for {len(todo)} prompts ({len(done)} cached) → {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc=f"{name}: pass rates", disable=not progress, leave=False)
    try:
        for chunk in batches:
            prompts = [build_prompt(e.question) for e in chunk for _ in range(k)]
            batch_seed = step_seed(seed, int(hashlib.sha256(chunk[0].question.encode()).hexdigest()[:8], 16))
            replies = generate(model, tokenizer, model_config, prompts, config, greedy=False, seed=batch_seed,
                               batch_size=per_batch * k)
            lines = []
            for i, example in enumerate(chunk):
                rate = score_samples(example, replies[i * k:(i + 1) * k], tokenizer, config)
                done[example.question] = rate
                lines.append(json.dumps(rate.to_dict()) + "\n")
            with open(path, "a") as f:  # one write per batch, then fsync: a kill loses at most this batch
                f.write("".join(lines))
                f.flush()
                os.fsync(f.fileno())
            bar.update(len(chunk))
    finally:
        bar.close()
    return [done[e.question] for e in examples]


def select_by_pass_rate(rates: Sequence[PassRate], config: Any) -> list[PassRate]:
    """The prompts solved sometimes, not always: `filter_pass_rate_min ≤ p̂ ≤ filter_pass_rate_max`."""
    return [r for r in rates if config.filter_pass_rate_min <= r.pass_rate <= config.filter_pass_rate_max]


def examples_of(rates: Sequence[PassRate], examples: Sequence[Any]) -> list[Any]:
    """The examples (from `examples`) the measured prompts `rates` belong to, in `rates`' order."""
    by_question = {e.question: e for e in examples}
    return [by_question[r.question] for r in rates if r.question in by_question]


def mixed_group_probability(p: Any, g: int) -> Any:
    """Chance that G replies to a prompt solved with probability p disagree: 1 − pᴳ − (1 − p)ᴳ."""
    p = np.asarray(p, dtype=np.float64)
    return 1.0 - p**g - (1.0 - p) ** g


def mixed_group_fraction(correct: Any, group_size: int) -> float:
    """Share of groups (consecutive runs of `group_size` replies, as Tunix orders them) whose
    correctness is mixed: some right, some wrong. Only these carry a correctness signal."""
    grouped = np.asarray(correct, dtype=bool).reshape(-1, group_size)
    if grouped.size == 0:
        return float("nan")
    return float(np.mean(grouped.any(axis=1) & ~grouped.all(axis=1)))


def summary(rates: Sequence[PassRate], config: Any) -> dict[str, Any]:
    """Counts and means of one measurement: how many prompts are never / sometimes / always solved."""
    p = np.array([r.pass_rate for r in rates], dtype=np.float64)
    if not len(p):
        return {"prompts": 0}
    selected = select_by_pass_rate(rates, config)
    return {
        "prompts": len(rates), "k": rates[0].k, "mean_pass_rate": float(p.mean()),
        "never": int(np.sum(p == 0)), "always": int(np.sum(p == 1)), "selected": len(selected),
        "format_rate": float(np.mean([np.mean(r.formatted) for r in rates])),
        "truncation_rate": float(np.mean([np.mean(r.truncated) for r in rates])),
        "mean_length": float(np.mean([np.mean(r.lengths) for r in rates])),
        "expected_mixed_groups": float(mixed_group_probability(p, config.num_generations).mean()),
    }


def pass_rate_gain(before: Sequence[PassRate], after: Sequence[PassRate], *, seed: int = 0,
                   n_resamples: int = 2000) -> dict[str, float]:
    """p̂ after − p̂ before on the same prompts, with evaluation's paired bootstrap over prompts."""
    after_by = {r.question: r for r in after}
    pairs = [(b.pass_rate, after_by[b.question].pass_rate) for b in before if b.question in after_by]
    if len(pairs) < len(before):
        raise ValueError(f"{len(before) - len(pairs)} prompts measured before have no measurement after")
    x, y = (np.array(v, dtype=np.float64) for v in zip(*pairs)) if pairs else (np.array([]), np.array([]))
    result = paired_bootstrap(x, y, seed=seed, n_resamples=n_resamples)
    return {**result, "before": float(x.mean()) if len(x) else float("nan"),
            "after": float(y.mean()) if len(y) else float("nan")}
