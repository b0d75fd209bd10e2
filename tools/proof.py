"""Does GRPO learn? A test with power: per-prompt pass rates before and after, and a control (part 06).

`python -m tools.proof --profile cpu --run-dir runs/proof-cpu --k 8 --train-candidates 48
--heldout-candidates 48 --grpo-steps 30 --set filter_difficulties=easy,medium`

1. **sft** — SFT as part 06 runs it (continued from this run's checkpoint, or copied from
   `--sft-from`, another run folder with the same SFT settings).
2. **filter** — k replies per candidate at the rollout temperature with the SFT policy: training
   candidates and, disjoint from them, held-out candidates (`filtering.measure_pass_rates`).
   The prompts solved sometimes, not always, are kept (`filtering.select_by_pass_rate`).
3. **grpo** — `training.train_grpo` with `filter_prompts=True`: it trains on exactly the kept
   training prompts (it reads the same cached pass rates).
4. **after** — k new replies (another seed) per kept prompt with the GRPO policy: p̂ after.
5. **control** — the same GRPO run with `control="lr0"` (learning rate 0; its "after" is the SFT
   policy sampled afresh, free of the selection on p̂ before) or `"shuffle"` (rewards shuffled
   within each group), in ``<run>/control-<kind>``, then its p̂ after.
6. **greedy** — the course's greedy evaluation (`config.eval_examples` test problems) of the SFT
   and GRPO policies, a regression check on format and accuracy.

Every stage is cached (checkpoints, pass-rate files, saved evaluations), so a killed run continues
where it stopped; `--stop-after STAGE` ends after one (a pilot: `--stop-after filter`). The report
— `proof.json`, `proof.md` and `signal_curves.png` in the run folder — is rewritten from whatever
is done. Gains are paired bootstraps over prompts (`evaluation.paired_bootstrap`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from course_utils import filtering, training
from course_utils.checkpoints import restore_lora
from course_utils.config import TrainingConfig
from course_utils.data import load_splits
from course_utils.evaluation import evaluate_or_reuse, find_checkpoint, paired_bootstrap
from course_utils.files import atomic_write
from course_utils.filtering import PassRate, summary
from course_utils.lora import apply_lora
from course_utils.model import load_model, model_mesh
from course_utils.plots import plot_signal_curves
from course_utils.training import checkpoint_dir, latest_stage_checkpoint

STAGES = ("sft", "filter", "grpo", "after", "control", "greedy")


def hardware_description() -> str:
    """e.g. "TPU v5 lite × 8" or "cpu × 1 (x86_64, 2 cores)", for proof and benchmark reports."""
    devices = jax.devices()
    text = f"{devices[0].device_kind} × {len(devices)}"
    if devices[0].platform == "cpu":
        text += f" ({platform.machine()}, {os.cpu_count()} cores)"
    return text


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """`--set field=value` pairs as config overrides; values are read as JSON when they parse
    (numbers, true/false, null), else kept as strings."""
    out: dict[str, Any] = {}
    for item in items:
        field, sep, text = item.partition("=")
        if not sep or not field.strip():
            raise ValueError(f"--set {item!r}: write field=value, e.g. --set filter_difficulties=easy,medium")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[field.strip()] = value
    return out


def proof_config(profile: str, *, k: int, train_candidates: int, grpo_steps: int | None,
                 sets: dict[str, Any]) -> Any:
    """The profile's config with filtering on, k samples, the candidates and steps asked for."""
    changes = {"filter_prompts": True, "filter_samples_k": k, "filter_candidates": train_candidates, **sets}
    if grpo_steps is not None:
        changes["max_steps"] = grpo_steps
    return TrainingConfig.for_profile(profile, **changes)


def _copy_sft(source: Path, run: Path) -> None:
    """Copy another run's SFT checkpoints (and metrics) into `run`, unless it has its own."""
    if latest_stage_checkpoint(run, "sft") is not None:
        return
    if latest_stage_checkpoint(source, "sft") is None:
        raise FileNotFoundError(f"{source} has no SFT checkpoint to copy; run part 06 there first or drop --sft-from")
    shutil.copytree(checkpoint_dir(source, "sft"), checkpoint_dir(run, "sft"), dirs_exist_ok=True)
    if (source / "metrics_sft.jsonl").exists():
        shutil.copy2(source / "metrics_sft.jsonl", run / "metrics_sft.jsonl")
    print(f"sft: copied the SFT checkpoints of {source}")


def _restore(actor: Any, run: Path, stage: str) -> str:
    """Load the newest `stage` checkpoint of `run` into the actor; returns its name for caches."""
    step = restore_lora(actor, checkpoint_dir(run, stage))
    if step == 0:
        raise FileNotFoundError(f"no {stage} checkpoint in {run}")
    return f"{stage} step {step}"


def pass_rate_gain(before: Sequence[PassRate], after: Sequence[PassRate], *, seed: int = 0,
                   n_resamples: int = 2000) -> dict[str, float]:
    """p̂ after − p̂ before on the same prompts, with evaluation's paired bootstrap over prompts."""
    after_by = {r.question: r for r in after}
    if missing := [b for b in before if b.question not in after_by]:
        raise ValueError(f"{len(missing)} prompts measured before have no measurement after")
    x = np.array([b.pass_rate for b in before], dtype=np.float64)
    y = np.array([after_by[b.question].pass_rate for b in before], dtype=np.float64)
    return {**paired_bootstrap(x, y, seed=seed, n_resamples=n_resamples),
            "before": float(x.mean()) if len(x) else float("nan"), "after": float(y.mean()) if len(y) else float("nan")}


def _gain_row(label: str, before: Sequence[Any], after: Sequence[Any] | None, seed: int) -> dict[str, Any]:
    row: dict[str, Any] = {"comparison": label, "prompts": len(before)}
    if after is not None and before:
        row.update(pass_rate_gain(before, after, seed=seed))
    return row


def report(run: Path, config: Any, state: dict[str, Any]) -> dict[str, Any]:
    """Write proof.json and proof.md from what the stages have produced so far."""
    seed = config.seed
    rows = []
    for part in ("train", "heldout"):
        before = state.get(f"{part}_selected_before")
        if before is None:
            continue
        kind = state.get("control_kind")
        rows.append(_gain_row(f"{part}: GRPO after − before", before, state.get(f"{part}_after"), seed))
        rows.append(_gain_row(f"{part}: control ({kind}) after − before", before, state.get(f"{part}_control_after"), seed))
        if state.get(f"{part}_after") is not None and state.get(f"{part}_control_after") is not None:
            rows.append(_gain_row(f"{part}: GRPO after − control after", state[f"{part}_control_after"],
                                  state[f"{part}_after"], seed))
    out = {
        "hardware": hardware_description(), "profile": config.profile, "k": config.filter_samples_k,
        "grpo_steps": config.max_steps, "num_generations": config.num_generations,
        "control": state.get("control_kind"), "stages_done": state.get("done", []),
        "seconds": state.get("seconds", {}),
        "candidates": {p: summary(state[f"{p}_candidates"], config) for p in ("train", "heldout")
                       if state.get(f"{p}_candidates") is not None},
        "gains": rows, "greedy": state.get("greedy"),
        "config": {k: getattr(config, k) for k in ("temperature", "beta", "learning_rate", "num_generations",
                                                   "global_batch_size", "max_generation_length", "filter_difficulties",
                                                   "filter_pass_rate_min", "filter_pass_rate_max")},
    }
    atomic_write(run / "proof.json", json.dumps(out, indent=2, default=float) + "\n")
    atomic_write(run / "proof.md", markdown(out))
    return out


def _pct(x: Any) -> str:
    return "—" if x is None else f"{100 * float(x):+.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The proof's tables in Markdown (README-ready): candidates, gains with 95 % intervals, greedy."""
    lines = [f"Proof run on {result['hardware']} ({result['profile']} profile), k = {result['k']} samples per prompt, "
             f"{result['grpo_steps']} GRPO steps, G = {result['num_generations']}, control: {result['control']}.", "",
             "| candidates | prompts | mean p̂ | never | always | kept | format | truncated |", "|---|---|---|---|---|---|---|---|"]
    for part, s in result["candidates"].items():
        if s.get("prompts"):
            lines.append(f"| {part} | {s['prompts']} | {s['mean_pass_rate']:.3f} | {s['never']} | {s['always']} | "
                         f"{s['selected']} | {100 * s['format_rate']:.1f} % | {100 * s['truncation_rate']:.1f} % |")
    lines += ["", "| comparison (kept prompts) | prompts | p̂ before | p̂ after | difference, pt | 95 % CI, pt |",
              "|---|---|---|---|---|---|"]
    for row in result["gains"]:
        if "difference" in row:
            lines.append(f"| {row['comparison']} | {row['n']} | {row['before']:.3f} | {row['after']:.3f} | "
                         f"{_pct(row['difference'])} | [{_pct(row['low'])}, {_pct(row['high'])}] |")
        else:
            lines.append(f"| {row['comparison']} | {row['prompts']} | — | not measured yet | — | — |")
    greedy = result.get("greedy")
    if greedy:
        lines += ["", f"Greedy regression check ({greedy['problems']} test problems):", "",
                  "| metric | SFT | GRPO | GRPO − SFT, pt (95 % CI) |", "|---|---|---|---|"]
        for metric, g in greedy["metrics"].items():
            lines.append(f"| {metric} | {100 * g['sft']:.1f} % | {100 * g['grpo']:.1f} % | "
                         f"{_pct(g['difference'])} [{_pct(g['low'])}, {_pct(g['high'])}] |")
    return "\n".join(lines) + "\n"


def run_proof(config: Any, run: Path, *, heldout_candidates: int, control: str = "lr0",
              stop_after: str | None = None, sft_from: Path | None = None, eval_examples: int | None = None) -> dict:
    """All stages of the proof in `run` (each resumable); returns the report."""
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"--stop-after {stop_after!r}: choose one of {', '.join(STAGES)}")
    if control not in ("lr0", "shuffle"):
        raise ValueError(f"control={control!r}: choose 'lr0' or 'shuffle'")
    run = Path(run).resolve()  # Orbax writes only to absolute paths
    run.mkdir(parents=True, exist_ok=True)
    config.save(run / "config.json")
    state: dict[str, Any] = {"done": [], "seconds": {}, "control_kind": control}

    def finish(stage: str, started: float) -> bool:
        state["done"].append(stage)
        state["seconds"][stage] = round(time.perf_counter() - started, 1)
        report(run, config, state)
        print(f"proof: stage {stage} done ({state['seconds'][stage]:.0f} s)")
        return stage == stop_after

    mesh = model_mesh(config)
    jax.set_mesh(mesh)
    loaded = load_model(config, mesh)
    actor = apply_lora(loaded.model, config, mesh)
    tok, model_config = loaded.tokenizer, loaded.model_config
    train = load_splits(config)["train"]
    rates_dir = run / filtering.PASS_RATES_DIR

    started = time.perf_counter()
    if sft_from is not None:
        _copy_sft(Path(sft_from), run)
    print(training.train_sft(config, actor, tok, train, run, deadline=training.Deadline(None)).message())
    sft_name = _restore(actor, run, "sft") if config.sft_steps else None
    if finish("sft", started):
        return report(run, config, state)

    started = time.perf_counter()
    fitting = training.prompts_that_fit(train, tok, config)
    pools = {"train": filtering.candidate_prompts(fitting, config),
             "heldout": filtering.candidate_prompts(fitting, config, heldout_candidates, skip=config.filter_candidates)}
    for part, pool in pools.items():
        rates = filtering.measure_pass_rates(actor, tok, model_config, pool, config, rates_dir,
                                             name=f"{part}-before", checkpoint=sft_name)
        state[f"{part}_candidates"] = rates
        state[f"{part}_selected_before"] = filtering.select_by_pass_rate(rates, config)
    if finish("filter", started):
        return report(run, config, state)
    kept = {part: filtering.examples_of(state[f"{part}_selected_before"], pools[part]) for part in pools}

    def grpo_and_after(run_dir: Path, cfg: Any, suffix: str) -> None:
        began = time.perf_counter()
        if config.sft_steps:
            _restore(actor, run, "sft")
        reference = training.run_cells(["reference"], config=cfg, loaded=loaded, actor=actor, mesh=mesh)["reference"]
        result = training.train_grpo(cfg, actor, reference, tok, train, run_dir, mesh, deadline=training.Deadline(None),
                                     model_config=model_config, pass_rates_dir=rates_dir)
        print(result.message())
        name = _restore(actor, run_dir, "grpo")
        state["seconds"][f"grpo{suffix}"] = round(time.perf_counter() - began, 1)
        began = time.perf_counter()
        for part in pools:
            state[f"{part}{suffix}_after"] = filtering.measure_pass_rates(
                actor, tok, model_config, kept[part], cfg, rates_dir, name=f"{part}-after{suffix}",
                seed=config.seed + 1, checkpoint=f"{run_dir.name} {name}")
        state["seconds"][f"after{suffix}"] = round(time.perf_counter() - began, 1)

    started = time.perf_counter()
    grpo_and_after(run, config, "")
    state["done"].append("grpo")
    if stop_after == "grpo" or finish("after", started):
        return report(run, config, state)

    started = time.perf_counter()
    control_run = run / f"control-{control}"
    control_run.mkdir(exist_ok=True)
    if config.sft_steps:
        _copy_sft(run, control_run)
    grpo_and_after(control_run, dataclasses.replace(config, control=control), "_control")
    if finish("control", started):
        return report(run, config, state)

    started = time.perf_counter()
    test = load_splits(config)["test"][: eval_examples or config.eval_examples]
    results = {}
    for stage in ("sft", "grpo"):
        checkpoint = find_checkpoint(run, stage, search_kaggle_inputs=False)
        _restore(actor, run, stage)
        results[stage] = evaluate_or_reuse(stage, actor, config, test, run, loaded=loaded, checkpoint=checkpoint)
    state["greedy"] = {"problems": len(test), "metrics": {}}
    for metric in ("format", "strict", "truncated"):
        gain = paired_bootstrap(results["sft"].values(metric), results["grpo"].values(metric), seed=config.seed)
        state["greedy"]["metrics"][metric] = {"sft": float(results["sft"].values(metric).mean()),
                                              "grpo": float(results["grpo"].values(metric).mean()), **gain}
    curves = {"GRPO": run / "metrics_grpo.jsonl", f"control ({control})": control_run / "metrics_grpo.jsonl"}
    plot_signal_curves(curves, run / "signal_curves.png")
    finish("greedy", started)
    return report(run, config, state)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu", help="smoke | cpu | gpu | tpu (default: cpu)")
    parser.add_argument("--run-dir", required=True, help="the proof's own run folder, e.g. runs/proof-cpu")
    parser.add_argument("--k", type=int, default=8, help="samples per prompt for p̂ (default 8)")
    parser.add_argument("--train-candidates", type=int, default=48)
    parser.add_argument("--heldout-candidates", type=int, default=48)
    parser.add_argument("--grpo-steps", type=int, default=None, help="default: the profile's max_steps")
    parser.add_argument("--control", default="lr0", choices=("lr0", "shuffle"))
    parser.add_argument("--eval-examples", type=int, default=None, help="greedy check size (default: config.eval_examples)")
    parser.add_argument("--sft-from", default=None, help="copy the SFT checkpoints of this run folder")
    parser.add_argument("--stop-after", default=None, choices=STAGES)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override (repeatable)")
    args = parser.parse_args(argv)
    config = proof_config(args.profile, k=args.k, train_candidates=args.train_candidates,
                          grpo_steps=args.grpo_steps, sets=parse_sets(args.set))
    result = run_proof(config, Path(args.run_dir), heldout_candidates=args.heldout_candidates, control=args.control,
                       stop_after=args.stop_after, sft_from=Path(args.sft_from) if args.sft_from else None,
                       eval_examples=args.eval_examples)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
