"""Benchmark of the cpu model (part 04): load time, greedy tokens/s at batch 8, peak memory.

    python -m tools.bench_model                 # warm load (conversion cached)
    python -m tools.bench_model --cold          # convert again into a fresh cache folder
    python -m tools.bench_model --profile smoke --dtype bfloat16
    python -m tools.bench_model --compare --rounds 2   # full vs trimmed vocabulary

Prompts are 128 tokens and 128 new tokens are generated greedily through Tunix's Sampler with
a KV cache; the first call (which compiles) is timed apart from the next ones. Tokens/s is
batch x new tokens / seconds of the fastest call after compilation; the printed completion
lengths show whether a row stopped early at a stop token.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from course_utils.config import TrainingConfig
from course_utils.generate import make_sampler
from course_utils.model import load_model
from course_utils.tokenizer import EOS_TOKENS
from tools.bench_training import compare


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "gpu", "tpu"])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="override param_dtype")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the compiling one")
    parser.add_argument("--cold", action="store_true", help="convert into an empty temporary cache first")
    parser.add_argument("--variant", choices=["full", "trimmed"], default="trimmed",
                        help="full: all 262,144 vocabulary rows; trimmed: as the profile says (vocab_trim)")
    parser.add_argument("--compare", action="store_true", help="run both variants side by side (own processes)")
    parser.add_argument("--rounds", type=int, default=1, help="with --compare: rounds of both variants")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.compare:
        passed = ["--profile", args.profile, "--batch", str(args.batch), "--prompt-tokens", str(args.prompt_tokens),
                  "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
        passed += ["--dtype", args.dtype] if args.dtype else []
        table = compare("tools.bench_model", passed, args.rounds, {
            "tokens_per_second": ("greedy tokens/s", "rate"),
            "first_call_seconds": ("first call, compiling (s)", "time"),
            "load_seconds": ("load (s)", "time"), "peak_rss_gb": ("peak RSS (GB)", "time")})
        if args.json:
            args.json.write_text(json.dumps(table, indent=2) + "\n")
        return 0

    cold_dir = None
    if args.cold:  # an empty cache: the GGUF is converted again (the real cache is left alone)
        cold_dir = tempfile.mkdtemp(prefix="course_cache_")
        os.environ["COURSE_CACHE_DIR"] = cold_dir
    overrides = {"param_dtype": args.dtype} if args.dtype else {}
    prompt_len = args.prompt_tokens
    overrides.update(max_prompt_length=prompt_len, max_generation_length=args.new_tokens,
                     cache_size=prompt_len + args.new_tokens)
    config = TrainingConfig.for_profile(args.profile, **overrides)

    start = time.perf_counter()
    loaded = load_model(config, full_vocabulary=args.variant == "full")
    load_s = time.perf_counter() - start
    print(f"model: {loaded.source}")
    print(f"load time: {load_s:.1f} s ({'cold: conversion included' if args.cold else 'warm'}), "
          f"param_dtype {config.param_dtype}")

    # Prompts of exactly prompt_len tokens with BOS (different texts, so rows differ).
    tok = loaded.tokenizer
    base = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
            "clips in May. How many clips did Natalia sell altogether in April and May? ")
    prompts = []
    for i in range(args.batch):
        ids = tok.encode(f"Question {i + 1}. " + base * 20)[: prompt_len - 1]
        prompts.append(tok.decode(ids))
    sampler = make_sampler(loaded.model, tok, loaded.model_config, config)
    kwargs = dict(max_generation_steps=args.new_tokens, max_prompt_length=prompt_len,
                  eos_tokens=list(EOS_TOKENS), echo=False)

    start = time.perf_counter()
    out = sampler(prompts, **kwargs)
    first_s = time.perf_counter() - start
    generated = args.batch * args.new_tokens
    print(f"first call (compiles): {first_s:.1f} s")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = sampler(prompts, **kwargs)
        times.append(time.perf_counter() - start)
    best = min(times)
    lengths = [len(t) for t in out.tokens]
    print(f"greedy batch {args.batch}, {prompt_len}-token prompts, {args.new_tokens} new tokens: "
          f"{best:.2f} s per call -> {generated / best:.1f} tokens/s "
          f"(completion lengths before a stop token: {lengths})")
    print(f"peak RSS: {peak_rss_gb():.2f} GB")
    print(f"sample: {out.text[0][:120]!r}")
    if args.json:
        args.json.write_text(json.dumps({
            "variant": args.variant, "vocabulary": loaded.model_config.num_embed, "load_seconds": round(load_s, 2),
            "first_call_seconds": round(first_s, 2), "tokens_per_second": round(generated / best, 2),
            "peak_rss_gb": round(peak_rss_gb(), 2), "completion_lengths": lengths, "sample": out.text[0][:200],
        }, indent=2) + "\n")
    if cold_dir:
        shutil.rmtree(cold_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
