"""Benchmark GRPO on a profile: rollout tokens/s, seconds per step by phase, peak memory (part 06).

    python -m tools.bench_training                 # cpu profile (real Gemma 3 270M), 4 steps
    python -m tools.bench_training --profile smoke --steps 3 --sft-steps 2
    python -m tools.bench_training --compare --rounds 2   # today's path vs the trimmed one

`--variant full` runs the path without the speed-ups (full 262,144-row vocabulary, Tunix's own
GRPO loss); `--variant trimmed` (default) the profile as configured (cpu: `vocab_trim`, the
completion-head loss). `--compare` runs both, each in its own process so that each gets its own
peak memory, alternating for `--rounds` rounds, and prints medians, ratios and the machine.

Runs in a temporary run directory (nothing of yours is touched). The first step includes JAX
compilation, so per-step figures are the median of the steps after it. Times are the wall time
of each Tunix call (rollout = `RLCluster.generate`, reference = reference log-probs, update =
the actor's optimiser step); JAX dispatches asynchronously, so a little of one phase can be
counted in the next.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax

from course_utils import training
from course_utils.config import TrainingConfig
from course_utils.data import load_splits
from course_utils.lora import apply_lora
from course_utils.metrics import read_metrics
from course_utils.model import load_model, model_mesh


def _median_after_first(values: list[float]) -> float:
    later = values[1:] or values
    return statistics.median(later) if later else float("nan")


VARIANTS = {"full": dict(vocab_trim=False, grpo_loss_fn="grpo"), "trimmed": {}}


def machine() -> str:
    """This machine in words: CPU model, cores, memory, JAX devices."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        memory = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{model}, {os.cpu_count()} cores available{memory}"


def compare(module: str, argv: list[str], rounds: int, keys: dict[str, str]) -> dict[str, Any]:
    """Run `python -m module argv --variant V --json F` for V in full, trimmed, `rounds` times
    (alternating), and print each figure's median per variant and the ratio full / trimmed.
    `keys` maps a figure to (how it reads, "time" or "rate"): the gain is full / trimmed for a
    time (or memory), trimmed / full for a rate, so > 1 means the trimmed path is better."""
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            for variant in VARIANTS:
                out = Path(tmp) / f"{variant}-{round_}.json"
                cmd = [sys.executable, "-m", module, *argv, "--variant", variant, "--json", str(out)]
                print(f"round {round_ + 1}/{rounds}: {variant} ...", flush=True)
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
                if done.returncode:  # e.g. -9: killed, out of memory; reported, not fatal
                    print(f"  {variant} failed with exit status {done.returncode} (-9: killed, e.g. out of memory):\n"
                          f"{done.stderr[-1500:]}", flush=True)
                    failures.append(f"{variant} (round {round_ + 1}): exit status {done.returncode}")
                    continue
                results[variant].append(json.loads(out.read_text()))
    table = {"machine": machine(), "rounds": rounds, "figures": {}, "failures": failures}
    print(f"\n{module} --compare on {table['machine']} ({rounds} round(s); medians)")
    print(f"{'':34s} {'full':>10s} {'trimmed':>10s} {'gain':>9s}")
    for key, (words, kind) in keys.items():
        values = {v: statistics.median(float("nan") if r.get(key) is None else r[key] for r in results[v]) if results[v] else float("nan") for v in VARIANTS}
        better, worse = (values["trimmed"], values["full"]) if kind == "rate" else (values["full"], values["trimmed"])
        gain = better / worse if worse else float("nan")
        table["figures"][key] = {**values, "gain": round(gain, 2)}
        print(f"{words:34s} {values['full']:10.2f} {values['trimmed']:10.2f} {gain:8.2f}x")
    for failure in failures:
        print(f"failed: {failure}")
    table["runs"] = results
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--variant", choices=list(VARIANTS), default="trimmed")
    parser.add_argument("--compare", action="store_true", help="run both variants side by side")
    parser.add_argument("--rounds", type=int, default=1, help="with --compare: rounds of both variants")
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps to time")
    parser.add_argument("--sft-steps", type=int, default=0, help="SFT steps before GRPO (0 = none)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (default: the profile's batch)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.compare:
        passed = ["--profile", args.profile, "--steps", str(args.steps), "--sft-steps", str(args.sft_steps)]
        passed += ["--prompts", str(args.prompts)] if args.prompts else []
        table = compare("tools.bench_training", passed, args.rounds, {
            "seconds_per_step": ("GRPO seconds per step", "time"),
            "rollout_seconds": ("  of which rollout (s)", "time"),
            "update_seconds": ("  of which log-probs + update (s)", "time"),
            "rollout_tokens_per_second": ("rollout tokens/s", "rate"),
            "peak_rss_gb": ("peak RSS (GiB)", "time"),
        })
        if args.json:
            args.json.write_text(json.dumps(table, indent=2) + "\n")
        return 0

    batch = dict.fromkeys(("global_batch_size", "mini_batch_size", "micro_batch_size"), args.prompts) if args.prompts else {}
    config = TrainingConfig.for_profile(args.profile, max_steps=args.steps, sft_steps=args.sft_steps,
                                        time_budget_minutes=None, checkpoint_every=10**6,
                                        **VARIANTS[args.variant], **batch)
    mesh = model_mesh(config)
    jax.set_mesh(mesh)
    began = time.perf_counter()
    loaded = load_model(config, mesh)
    load_seconds = time.perf_counter() - began
    actor = apply_lora(loaded.model, config, mesh)
    train = load_splits(config)["train"]
    with tempfile.TemporaryDirectory() as tmp:
        sft = training.train_sft(config, actor, loaded.tokenizer, train, tmp)
        reference = training.run_cells(["reference"], config=config, loaded=loaded, actor=actor, mesh=mesh)["reference"]
        result = training.train_grpo(config, actor, reference, loaded.tokenizer, train, tmp, mesh)
        rows = read_metrics(Path(tmp) / "metrics_grpo.jsonl")
        sft_rows = read_metrics(Path(tmp) / "metrics_sft.jsonl") if args.sft_steps else []

    per_step = {name: _median_after_first(values) for name, values in result.timings.items() if values}
    sequences = config.global_batch_size * config.num_generations
    tokens = [r.get("completion_length_mean", float("nan")) * sequences for r in rows]
    rollouts = result.timings.get("generate", [])
    token_rates = [t / s for t, s in zip(tokens, rollouts) if s > 0]
    figures = {
        "profile": config.profile, "variant": args.variant, "vocabulary": loaded.model_config.num_embed,
        "grpo_loss_fn": config.grpo_loss_fn, "model": config.model, "steps": result.end_step,
        "G": config.num_generations, "prompts_per_step": config.global_batch_size,
        "max_new_tokens": config.max_generation_length, "load_seconds": round(load_seconds, 1),
        "first_step_seconds": round(sum(v[0] for v in result.timings.values() if v), 1),
        "seconds_per_step": round(sum(per_step.values()), 2),  # the phases' medians, added
        "seconds_by_phase": {k: round(v, 2) for k, v in per_step.items()},
        "rollout_seconds": round(per_step.get("generate", float("nan")), 2),
        "update_seconds": round(sum(v for k, v in per_step.items() if k != "generate"), 2),
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
