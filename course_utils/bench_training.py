"""Benchmark GRPO on a profile: rollout tokens/s, seconds per step by phase, peak memory (part 06).

    python -m course_utils.bench_training                 # cpu profile (real Gemma 3 270M), 4 steps
    python -m course_utils.bench_training --profile smoke --steps 3 --sft-steps 2

Runs in a temporary run directory (nothing of yours is touched). The first step includes JAX
compilation, so per-step figures are the median of the steps after it. Times are the wall time
of each Tunix call (rollout = `RLCluster.generate`, reference = reference log-probs, update =
the actor's optimiser step); JAX dispatches asynchronously, so a little of one phase can be
counted in the next.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path


def _median_after_first(values: list[float]) -> float:
    later = values[1:] or values
    return statistics.median(later) if later else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps to time")
    parser.add_argument("--sft-steps", type=int, default=0, help="SFT steps before GRPO (0 = none)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    import jax

    from course_utils import training
    from course_utils.config import TrainingConfig
    from course_utils.data import load_splits
    from course_utils.lora import apply_lora
    from course_utils.metrics import read_metrics
    from course_utils.model import load_model, model_mesh

    config = TrainingConfig.for_profile(args.profile, max_steps=args.steps, sft_steps=args.sft_steps,
                                        time_budget_minutes=None, checkpoint_every=10**6)
    mesh = model_mesh(config)
    jax.set_mesh(mesh)
    began = time.perf_counter()
    loaded = load_model(config, mesh)
    load_seconds = time.perf_counter() - began
    actor = apply_lora(loaded.model, config, mesh)
    train = load_splits(config)["train"]
    with tempfile.TemporaryDirectory() as tmp:
        sft = training.train_sft(config, actor, loaded.tokenizer, train, tmp)
        reference = training.make_reference(loaded.model, actor, config, mesh)
        result = training.train_grpo(config, actor, reference, loaded.tokenizer, train, tmp, mesh)
        rows = read_metrics(Path(tmp) / "metrics_grpo.jsonl")
        sft_rows = read_metrics(Path(tmp) / "metrics_sft.jsonl") if args.sft_steps else []

    per_step = {name: _median_after_first(values) for name, values in result.timings.items() if values}
    sequences = config.global_batch_size * config.num_generations
    tokens = [r.get("completion_length_mean", float("nan")) * sequences for r in rows]
    rollouts = result.timings.get("rollout", [])
    token_rates = [t / s for t, s in zip(tokens, rollouts) if s > 0]
    figures = {
        "profile": config.profile, "model": config.model, "steps": result.end_step,
        "G": config.num_generations, "prompts_per_step": config.global_batch_size,
        "max_new_tokens": config.max_generation_length, "load_seconds": round(load_seconds, 1),
        "first_step_seconds": round(sum(v[0] for v in result.timings.values() if v), 1),
        "seconds_per_step": round(sum(per_step.values()), 2),  # the phases' medians, added
        "seconds_by_phase": {k: round(v, 2) for k, v in per_step.items()},
        "rollout_tokens_per_second": round(_median_after_first(token_rates), 1) if token_rates else None,
        "sft_seconds_per_step": round(_median_after_first([r["seconds_per_step"] for r in sft_rows]), 2) if sft_rows else None,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "devices": f"{jax.device_count()} × {jax.devices()[0].device_kind}",
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    del sft
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
