"""Reward scoring speed (part 03/05): ``python -m tools.bench_rewards [--n 20000]``.

Prints the composite reward's throughput on typical replies (one Python thread, so one core),
each component's own throughput, the Tunix adapters' per-batch cost, and the time to score
1 MB pathological inputs. The target is ≥ 5,000 replies/s for the composite.

Typical replies are built from real GSM8K solutions when a local copy is found (else from the
offline generator): the gold in course format, the same with a wrong answer, without tags,
with chatter around the tags, cut off, and the hand-written model-style replies of part 05.
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from typing import Any, Callable

from course_utils import rewards
from course_utils.config import TrainingConfig
from course_utils.data import (
    SourceUnavailable,
    format_solution,
    load_gsm8k,
    local_gsm8k_dir,
    read_gsm8k_folder,
)
from course_utils.reward_analysis import SAMPLE_PROBLEM, SAMPLE_REPLIES, wrong_answer

TARGET_PER_S = 5000


def typical_replies(n: int, seed: int = 0) -> list[tuple[str, str, str, str]]:
    """(reply, gold answer, question, difficulty) × n, a mix of the kinds a policy writes."""
    try:
        examples = read_gsm8k_folder(local_gsm8k_dir(), "test")
    except SourceUnavailable:
        examples = load_gsm8k("test", source="synthetic", verbose=False)
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        ex = rng.choice(examples)
        gold = format_solution(ex)
        kind = rng.randrange(6)
        if kind == 0:
            reply = gold
        elif kind == 1:
            reply = gold.replace(f"<answer>{ex.answer}</answer>", f"<answer>{wrong_answer(ex.answer)}</answer>")
        elif kind == 2:
            reply = gold.replace("<reasoning>", "").replace("</reasoning>", "").replace("<answer>", "The answer is ")
        elif kind == 3:
            reply = f"Sure! Let's solve it.\n{gold}\nHope this helps!"
        elif kind == 4:
            reply = gold[: len(gold) // 2]
        else:
            reply = rng.choice(list(SAMPLE_REPLIES.values()))
            ex = SAMPLE_PROBLEM
        out.append((reply, ex.answer, ex.question, ex.difficulty))
    return out


def _rate(fn: Callable[[], Any], count: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return count / max(best, 1e-9)


def pathological_inputs() -> dict[str, str]:
    """1 MB strings built to trip backtracking regexes and quadratic scans."""
    mb = 1 << 20
    return {
        "digits and commas": ("1,234," * (mb // 6))[:mb],
        "equals signs": ("1 + 1 = 2 = " * (mb // 12))[:mb],
        "open tags": ("<reasoning><answer>" * (mb // 19))[:mb],
        "nested tags": ("<answer>" * (mb // 16) + "</answer>" * (mb // 18))[:mb],
        "one long line of words": ("step so then " * (mb // 13))[:mb],
        "unicode": ("∑ 数学 🧮 ١٢٣ " * (mb // 24))[:mb],
        "boxed braces": ("<answer>\\boxed{" * (mb // 15))[:mb],
        "whitespace": " \n\t" * (mb // 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="replies to score (default 20,000)")
    args = parser.parse_args(argv)
    config = TrainingConfig()
    batch = typical_replies(args.n)
    words = sum(len(r.split()) for r, *_ in batch) / len(batch)
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, one thread")
    print(f"{len(batch):,} typical replies, {words:.0f} words on average")

    def composite() -> None:
        for reply, gold, question, difficulty in batch:
            rewards.composite_reward(reply, gold, step=100, config=config, difficulty=difficulty, question=question)

    rate = _rate(composite, len(batch))
    print(f"composite_reward: {rate:,.0f} replies/s "
          f"({'meets' if rate >= TARGET_PER_S else 'BELOW'} the {TARGET_PER_S:,}/s target)")
    small = batch[: max(1, len(batch) // 4)]
    for name, fn in [
        ("format_reward", lambda r, g, q, d: rewards.format_reward(r)),
        ("coherence_reward", lambda r, g, q, d: rewards.coherence_reward(r, d, q)),
        ("extract_answer", lambda r, g, q, d: rewards.extract_answer(r)),
        ("is_correct", lambda r, g, q, d: rewards.is_correct(r, g)),
        ("correctness_reward", lambda r, g, q, d: rewards.correctness_reward(r, g, d, q)),
        ("efficiency_reward", lambda r, g, q, d: rewards.efficiency_reward(r)),
    ]:
        print(f"  {name:<20}{_rate(lambda: [fn(*item) for item in small], len(small)):>12,.0f} replies/s")

    fns = rewards.make_reward_fns(config, step_fn=lambda: 100)
    group = small[:16]
    prompts = [q for _, _, q, _ in group]
    completions = [r for r, *_ in group]
    answers = [g for _, g, _, _ in group]

    def tunix_call() -> None:
        for i in range(50):
            fresh = [c + " " * (i + 1) for c in completions]  # a new batch each time: no cache hits
            for fn in fns:
                fn(prompts=prompts, completions=fresh, answer=answers, mode="train")

    print(f"Tunix adapters ({len(fns)} functions, batch of {len(group)}): "
          f"{_rate(tunix_call, 50 * len(group)):,.0f} completions/s")
    print("1 MB pathological inputs (composite_reward, seconds):")
    for name, text in pathological_inputs().items():
        start = time.perf_counter()
        rewards.composite_reward(text, "72", config=config, question="A baker makes 48 muffins.")
        print(f"  {name:<24}{time.perf_counter() - start:>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
