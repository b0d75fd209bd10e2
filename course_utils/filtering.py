"""Prompts GRPO can learn from: pass-rate filtering with the SFT policy's own samples (part 06).

k replies per candidate prompt, sampled as GRPO's rollouts are and scored as evaluation scores;
the prompts solved *sometimes* are kept (Tunix 0.1.7 has no dynamic sampling). Samples are
cached as JSON lines written batch by batch: a killed measurement continues where it stopped.
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
from course_utils.evaluation import score_reply, token_counts
from course_utils.files import atomic_write
from course_utils.generate import generate, step_seed

PASS_RATES_DIR = "pass_rates"
_SAMPLING_FIELDS = ("model", "param_dtype", "max_prompt_length", "max_generation_length", "cache_size",
                    "temperature", "top_p", "top_k", "eval_batch_size")


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

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "PassRate":
        return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in row.items()})


def candidate_prompts(examples: Sequence[Any], config: Any, n: int | None = None, *, skip: int = 0) -> list[Any]:
    """`n` (default `config.filter_candidates`) examples of `config.filter_difficulties` in a
    seeded order, after the first `skip` (the proof's held-out candidates follow the training ones)."""
    wanted = {d.strip() for d in config.filter_difficulties.split(",")}
    pool = [e for e in examples if getattr(e, "difficulty", None) in wanted]
    if not pool:
        raise ValueError(f"no training example has a difficulty in filter_difficulties="
                         f"{config.filter_difficulties!r}; use easy, medium and/or hard, comma-separated")
    random.Random(config.seed + 17).shuffle(pool)
    n = config.filter_candidates if n is None else int(n)
    chosen = pool[skip:skip + n]
    if len(chosen) < n:
        print(f"filter: only {len(chosen)} candidates left after skipping {skip} (asked for {n})")
    return chosen


def cache_path(directory: str | os.PathLike, name: str, config: Any, k: int, seed: int, checkpoint: Any) -> Path:
    """The cache file of one measurement: its name plus a hash of everything the samples depend on."""
    key = json.dumps({"config": {f: getattr(config, f) for f in _SAMPLING_FIELDS}, "k": k, "seed": seed,
                      "checkpoint": None if checkpoint is None else str(checkpoint)}, sort_keys=True)
    return Path(directory) / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsonl"


def score_samples(example: Any, replies: Sequence[str], tokenizer: Any, config: Any) -> PassRate:
    """Score k replies to one prompt with evaluation's scorer: correctness, format, truncation."""
    limit, difficulty = config.max_generation_length, getattr(example, "difficulty", None)
    counts = token_counts(tokenizer, list(replies), limit)
    rows = [score_reply(r, str(example.answer), config=config, difficulty=difficulty, n_tokens=n,
                        max_new_tokens=limit) for r, n in zip(replies, counts)]
    return PassRate(example.question, str(example.answer), difficulty, *(tuple(bool(r[key]) for r in rows)
                    for key in ("strict", "format", "truncated")), tuple(counts), tuple(replies))


def measure_pass_rates(model: Any, tokenizer: Any, model_config: Any, examples: Sequence[Any], config: Any,
                       directory: str | os.PathLike, *, name: str, k: int | None = None, seed: int | None = None,
                       checkpoint: Any = None, progress: bool = True) -> list[PassRate]:
    """One `PassRate` per example (part 06): k replies each (default `config.filter_samples_k`) at
    the rollout settings, cached in `directory` (`checkpoint` names the weights)."""
    k = config.filter_samples_k if k is None else int(k)
    seed = config.seed if seed is None else int(seed)
    if k < 1:
        raise ValueError(f"k={k} must be >= 1 samples per prompt")
    path = cache_path(directory, name, config, k, seed, checkpoint)
    done: dict[str, PassRate] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rate = PassRate.from_dict(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut off by a kill (caches before atomic writes): measured again
        done[rate.question] = rate
    todo = [e for e in dict((e.question, e) for e in examples).values() if e.question not in done]
    per_batch = max(1, config.eval_batch_size // k)
    if todo:
        print(f"{name}: sampling {k} replies for {len(todo)} prompts ({len(done)} cached) → {path}")
    for start in tqdm(range(0, len(todo), per_batch), desc=f"{name}: pass rates", disable=not progress, leave=False):
        chunk = todo[start:start + per_batch]
        prompts = [build_prompt(e.question) for e in chunk for _ in range(k)]
        batch_seed = step_seed(seed, int(hashlib.sha256(chunk[0].question.encode()).hexdigest()[:8], 16))
        replies = generate(model, tokenizer, model_config, prompts, config, greedy=False, seed=batch_seed,
                           batch_size=per_batch * k)
        for i, example in enumerate(chunk):
            done[example.question] = score_samples(example, replies[i * k:(i + 1) * k], tokenizer, config)
        # rewritten whole after each batch, atomically: a kill loses at most this batch
        atomic_write(path, "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in done.values()))
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
    """Share of groups (consecutive runs of `group_size` replies, as Tunix orders them) with some
    replies right and some wrong: only these carry a correctness signal."""
    grouped = np.asarray(correct, dtype=bool).reshape(-1, group_size)
    return float(np.mean(grouped.any(axis=1) & ~grouped.all(axis=1))) if grouped.size else float("nan")


def summary(rates: Sequence[PassRate], config: Any) -> dict[str, Any]:
    """Counts and means of one measurement: how many prompts are never / sometimes / always solved."""
    if not rates:
        return {"prompts": 0}
    p = np.array([r.pass_rate for r in rates], dtype=np.float64)
    return {"prompts": len(rates), "k": rates[0].k, "mean_pass_rate": float(p.mean()),
            "never": int(np.sum(p == 0)), "always": int(np.sum(p == 1)),
            "selected": len(select_by_pass_rate(rates, config)),
            "format_rate": float(np.mean([np.mean(r.formatted) for r in rates])),
            "truncation_rate": float(np.mean([np.mean(r.truncated) for r in rates]))}

