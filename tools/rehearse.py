"""Full-size rehearsal of the `tpu` profile on 8 simulated CPU devices (part 06, issue 12).

    python -m tools.rehearse                    # compile at full size, then run at cut lengths
    python -m tools.rehearse --compile-only     # only XLA's compiled memory analysis
    python -m tools.rehearse --micro-batch 2    # another micro batch than the profile's
    python -m tools.rehearse --compare-meshes   # the GRPO update on every mesh 8 devices allow

It builds the real Gemma 3 1B architecture (Tunix's `ModelConfig.gemma3_1b_it`) at random
initialisation in the profile's dtype, on the mesh the course picks for 8 devices
(`env.choose_mesh_shape`: (2, 4)), puts the course's LoRA on it (`lora.apply_lora`) and builds
the two updates part 06 runs, each exactly as Tunix jits it (`PeftTrainer._train_step` under
`nnx.jit`, the optimiser state donated, the batch sharded on `fsdp`):

* one SFT step: `sft_batch_size × sft_max_length` tokens, Tunix's SFT loss, part 06's SFT optimiser;
* one GRPO update: a micro batch of `micro_batch_size × G` sequences of prompt + completion,
  the course's policy loss (`config.grpo_loss_fn`, part 06's `GRPOConfig`), part 06's GRPO
  optimiser wrapped in Tunix's gradient accumulation (mini / micro steps); both from part 06's
  cells (`training.run_cells`).

**Compiled at full size** (the profile's lengths), from abstract shapes — no weight is
allocated — it prints XLA's compiled memory analysis per device: parameters (frozen base and
LoRA), optimiser state, inputs and the update's temporaries, next to `course_utils.memory`'s
table for a 16 GiB TPU v5e chip, and exits with status 1 when the measured peak does not fit the
chip with `--margin` to spare. **Executed at cut lengths** (`--exec-*` flags: the real weights
and activations at full length do not fit this machine's RAM): the same updates run once on
random weights and random tokens, to show that they run and change the LoRA weights.

The figures are XLA's CPU buffer assignment on simulated devices, not a TPU's: TPU XLA fuses,
rematerialises and pads differently (its tiles are 8 × 128), so treat them as the size of the
problem, checked again on the first TPU run. JAX must see 8 devices before it starts, so
`main` runs itself again in a subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=8`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tunix.models.gemma3.model import Gemma3
from tunix.rl import function_registry
from tunix.rl.grpo.grpo_learner import TrainExample
from tunix.sft import peft_trainer, sharding_utils

from course_utils import training
from course_utils.config import TrainingConfig
from course_utils.env import choose_mesh_shape, valid_mesh_shapes
from course_utils.lora import apply_lora, frozen_filter
from course_utils.memory import TARGETS, memory_table
from course_utils.model import model_mesh, random_model, tunix_model_config
from course_utils.tokenizer import EOS_ID, PAD_ID

GIB = 1024**3
DEVICES = 8
DEVICE_FLAG = f"--xla_force_host_platform_device_count={DEVICES}"
MARGIN = 0.2  # the measured peak must leave this share of the chip free (runtime, rollouts, fragmentation)


# --- the pieces: model + LoRA + optimiser, the two updates, their inputs --------------------------------
def actor_and_optimizer(config: Any, mesh: Any, tx: Any, *, abstract: bool, seed: int = 0) -> tuple[Any, Any]:
    """The course's LoRA actor on `mesh` and its `nnx.Optimizer(tx, wrt=LoRAParam)`, as Tunix's
    trainer holds them. `abstract=True`: shapes and shardings only (nothing allocated); else
    `model.random_model` weights (the same on every mesh) and `lora.apply_lora`."""
    model_config = tunix_model_config(config)
    if not abstract:
        actor = apply_lora(random_model(model_config, mesh, seed=seed), config, mesh)
        return actor, nnx.Optimizer(actor, tx, wrt=nnx.LoRAParam)

    def build() -> tuple[Any, Any]:
        actor = apply_lora(Gemma3(model_config, rngs=nnx.Rngs(seed)), config, mesh=None)
        return actor, nnx.Optimizer(actor, tx, wrt=nnx.LoRAParam)

    with jax.set_mesh(mesh):
        actor, optimizer = nnx.eval_shape(build)
    for node in (actor, optimizer):  # the abstract mesh of eval_shape -> this mesh's devices
        state = nnx.state(node)
        nnx.update(node, jax.tree.map(lambda x: _on(mesh, x), state))
    return actor, optimizer


def _on(mesh: Any, x: Any) -> Any:
    spec = getattr(getattr(x, "sharding", None), "spec", jax.sharding.PartitionSpec())
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.NamedSharding(mesh, spec))


class _Step:
    """The attributes `PeftTrainer._train_step` reads, so that Tunix's own step body is what runs."""

    def __init__(self, loss_fn: Any, gen_model_input_fn: Any, has_aux: bool) -> None:
        self.loss_fn, self.gen_model_input_fn, self._has_aux, self._lora_enabled = loss_fn, gen_model_input_fn, has_aux, True


def jitted_update(kind: str, config: Any) -> Any:
    """Tunix's train step for `kind` ("sft" or "grpo"), jitted as PeftTrainer jits it (optimiser
    donated). GRPO's loss is installed as `GRPOLearner.__init__` installs it."""
    if kind == "sft":
        step = _Step(peft_trainer._default_loss_fn, training.sft_model_inputs, has_aux=False)
    elif kind == "grpo":
        algo = training.run_cells(["grpo_config"], config=config)["grpo_config"]
        algo.temperature = config.temperature  # as GRPOLearner sets it
        policy_loss_fn = function_registry.get_policy_loss_fn(algo.policy_loss_fn)

        def loss_fn(model: Any, train_example: Any, algo_config: Any) -> Any:
            return policy_loss_fn(model, train_example, algo_config=algo, pad_id=PAD_ID, eos_id=EOS_ID)

        step = _Step(loss_fn, lambda x: {"train_example": x, "algo_config": algo}, has_aux=True)
    else:
        raise ValueError(f"kind={kind!r} is unknown; use 'sft' or 'grpo'")
    return nnx.jit(types.MethodType(peft_trainer.PeftTrainer._train_step, step), donate_argnames=("optimizer",))


def update_optimizer(kind: str, config: Any) -> Any:
    """The optax transformation the trainer of `kind` holds: SFT's, or GRPO's inside Tunix's
    gradient accumulation over `mini_batch_size // micro_batch_size` micro-batches (RLCluster)."""
    if kind == "sft":
        return training.run_cells(["sft_optimizer"], config=config)["sft_optimizer"]
    grpo = training.run_cells(["grpo_optimizer"], config=config)["grpo_optimizer"]
    return optax.MultiSteps(grpo, config.mini_batch_size // config.micro_batch_size)


@dataclasses.dataclass(frozen=True)
class Shape:
    """One update's batch: `sequences` rows of `prompt` + `completion` tokens (SFT: prompt 0)."""

    kind: str
    sequences: int
    prompt: int
    completion: int

    def describe(self) -> str:
        if self.kind == "sft":
            return f"{self.sequences} sequences × {self.completion} tokens"
        return f"{self.sequences} sequences × ({self.prompt} prompt + {self.completion} completion) tokens"


def full_shapes(config: Any) -> list[Shape]:
    """The profile's SFT batch and GRPO micro batch (micro_batch_size × G sequences)."""
    return [Shape("sft", config.sft_batch_size, 0, config.sft_max_length),
            Shape("grpo", config.micro_batch_size * config.num_generations, config.max_prompt_length,
                  config.max_generation_length)]


def update_inputs(shape: Shape, config: Any, mesh: Any, *, abstract: bool, seed: int = 0) -> Any:
    """The batch the trainer's step receives, sharded as Tunix's `shard_input` shards it
    (first axis on `fsdp` when it divides): a TrainingInput (SFT) or a GRPO TrainExample."""
    vocab = tunix_model_config(config).num_embed
    rng = np.random.default_rng(seed)
    data = jax.sharding.PartitionSpec("fsdp")

    def array(shape: tuple[int, ...], dtype: Any, draw: Any) -> Any:
        sharding = sharding_utils.get_sharding(np.zeros(shape, np.int8), mesh=mesh, pspec=data)
        if abstract:
            return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
        return jax.device_put(np.asarray(draw(), dtype=dtype), sharding)

    n = shape.sequences
    tokens = lambda length: lambda: rng.integers(3, vocab, (n, length))  # noqa: E731
    if shape.kind == "sft":
        mask = lambda: np.tile(np.arange(shape.completion) >= shape.completion // 2, (n, 1))  # noqa: E731
        return peft_trainer.TrainingInput(input_tokens=array((n, shape.completion), jnp.int32, tokens(shape.completion)),
                                          input_mask=array((n, shape.completion), jnp.int32, mask))

    ones = lambda length: lambda: np.ones((n, length), bool)  # noqa: E731
    reference = None
    if config.beta != 0:
        reference = array((n, shape.completion), jnp.float32, lambda: np.full((n, shape.completion), -np.log(vocab)))
    return TrainExample(
        prompt_ids=array((n, shape.prompt), jnp.int32, tokens(shape.prompt)),
        prompt_mask=array((n, shape.prompt), jnp.bool_, ones(shape.prompt)),
        completion_ids=array((n, shape.completion), jnp.int32, tokens(shape.completion)),
        completion_mask=array((n, shape.completion), jnp.bool_, ones(shape.completion)),
        advantages=array((n,), jnp.float32, lambda: rng.standard_normal(n)),
        ref_per_token_logps=reference, old_per_token_logps=None,
    )


# --- measuring ----------------------------------------------------------------------------------------
def _per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of `tree`'s arrays (or abstract arrays) under their shardings."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            continue
        sharding = getattr(leaf, "sharding", None)
        shard = sharding.shard_shape(tuple(leaf.shape)) if sharding is not None else tuple(leaf.shape)
        total += math.prod(shard) * leaf.dtype.itemsize
    return total


def measure_update(shape: Shape, config: Any, mesh: Any, *, execute: bool = False, seed: int = 0) -> dict[str, Any]:
    """Compile `shape`'s update on `mesh` and return per-device bytes: `base`, `lora`,
    `optimizer`, `inputs` (from the shardings), XLA's `argument`, `output`, `alias`, `temp`
    (`compiled.memory_analysis()`), and `peak` = argument + output − alias + temp. With
    `execute`, the update also runs on random weights and tokens, as many micro-batches as one
    optimiser update takes (GRPO: mini / micro): `calls`, `seconds` per call, `loss`,
    `lora_changed` (the largest change of a LoRA weight)."""
    actor, optimizer = actor_and_optimizer(config, mesh, update_optimizer(shape.kind, config), abstract=not execute,
                                           seed=seed)
    inputs = update_inputs(shape, config, mesh, abstract=not execute, seed=seed)
    step = jitted_update(shape.kind, config)
    figures: dict[str, Any] = {
        "kind": shape.kind, "batch": shape.describe(), "mesh": tuple(mesh.shape.values()),
        "base": _per_device_bytes(nnx.state(actor, frozen_filter())),
        "lora": _per_device_bytes(nnx.state(actor, nnx.LoRAParam)),
        "optimizer": _per_device_bytes(nnx.state(optimizer, nnx.optimizer.OptState)),
        "inputs": _per_device_bytes(inputs),
    }
    began = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = step.lower(actor, optimizer, inputs).compile()
    figures["compile_seconds"] = round(time.perf_counter() - began, 1)
    analysis = compiled.memory_analysis()
    for name in ("argument", "output", "alias", "temp"):
        figures[name] = int(getattr(analysis, f"{name}_size_in_bytes"))
    figures["peak"] = figures["argument"] + figures["output"] - figures["alias"] + figures["temp"]
    if execute:
        before = [np.asarray(x, np.float32) for x in jax.tree.leaves(nnx.state(actor, nnx.LoRAParam))]
        # GRPO accumulates mini / micro micro-batches before the optimiser moves the weights
        calls = config.mini_batch_size // config.micro_batch_size if shape.kind == "grpo" else 1
        began = time.perf_counter()
        with jax.set_mesh(mesh):
            for _ in range(calls):
                loss, _, _ = step(actor, optimizer, inputs)
            loss = float(loss)
        figures["seconds"] = round((time.perf_counter() - began) / calls, 1)
        figures["calls"] = calls
        after = [np.asarray(x, np.float32) for x in jax.tree.leaves(nnx.state(actor, nnx.LoRAParam))]
        figures["loss"] = loss
        figures["lora_changed"] = float(max(np.abs(a - b).max() for a, b in zip(after, before)))
    return figures


def estimate(config: Any, mesh_shape: tuple[int, int]) -> dict[str, float]:
    """`course_utils.memory`'s per-device estimate (GiB) by component, for comparison."""
    return {row["component"]: row["per_device_gib"] for row in memory_table(config, mesh_shape)}


# --- the command --------------------------------------------------------------------------------------
def _gib(n: float) -> str:
    return f"{n / GIB:7.3f}"


def report(figures: dict[str, Any], label: str) -> str:
    """The per-device figures of one update as text."""
    lines = [f"{figures['kind'].upper()} update, {label}: {figures['batch']}, mesh {figures['mesh']}, "
             f"compiled in {figures['compile_seconds']} s",
             f"  parameters, frozen base   {_gib(figures['base'])} GiB per device",
             f"  parameters, LoRA          {_gib(figures['lora'])} GiB",
             f"  optimiser state           {_gib(figures['optimizer'])} GiB",
             f"  inputs (the batch)        {_gib(figures['inputs'])} GiB",
             f"  XLA arguments             {_gib(figures['argument'])} GiB (the four above)",
             f"  XLA outputs − donated     {_gib(figures['output'] - figures['alias'])} GiB",
             f"  XLA temporaries           {_gib(figures['temp'])} GiB (activations, logits, gradients)",
             f"  peak of the update        {_gib(figures['peak'])} GiB per device"]
    if "seconds" in figures:
        lines.append(f"  ran {figures['calls']} micro-batch(es) (one optimiser update), {figures['seconds']} s each: "
                     f"loss {figures['loss']:.4f}, largest LoRA change {figures['lora_changed']:.2e}")
    return "\n".join(lines)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    if DEVICE_FLAG not in flags:
        env["XLA_FLAGS"] = f"{flags} {DEVICE_FLAG}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["COURSE_REHEARSE_CHILD"] = "1"
    return env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.rehearse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tpu", help="the profile rehearsed (default %(default)s)")
    parser.add_argument("--model", default=None, help="another model than the profile's (e.g. tiny, for a quick check)")
    parser.add_argument("--micro-batch", type=int, default=None, help="GRPO micro_batch_size (default: the profile's)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field (JSON value), e.g. --set num_generations=8; repeatable")
    parser.add_argument("--mesh", default=None, help="fsdp,tp (default: the one the course picks for 8 devices)")
    parser.add_argument("--device-gib", type=float, default=None, help="memory per chip (default: the v5e's 16 GiB)")
    parser.add_argument("--margin", type=float, default=MARGIN, help="share of the chip to leave free (default %(default)s)")
    parser.add_argument("--compile-only", action="store_true", help="skip the execution at cut lengths")
    parser.add_argument("--compare-meshes", action="store_true", help="compile the GRPO update on every valid mesh")
    parser.add_argument("--exec-prompt-length", type=int, default=16, help="GRPO prompt tokens when executing")
    parser.add_argument("--exec-generation-length", type=int, default=16, help="GRPO completion tokens when executing")
    parser.add_argument("--exec-sft-length", type=int, default=32, help="SFT tokens when executing")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if os.environ.get("COURSE_REHEARSE_CHILD") != "1":  # JAX must see 8 devices from its start
        return subprocess.run([sys.executable, "-m", "tools.rehearse", *argv], env=_child_env(),
                              cwd=Path(__file__).resolve().parent.parent).returncode

    if len(jax.devices()) != DEVICES:
        print(f"rehearse: JAX sees {len(jax.devices())} devices, not {DEVICES}: start it without JAX already "
              f"running, or set XLA_FLAGS={DEVICE_FLAG}", file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {}
    if args.model:
        overrides["model"] = args.model
    if args.micro_batch:
        overrides["micro_batch_size"] = args.micro_batch
    for item in args.set:
        field, _, value = item.partition("=")
        if not value:
            print(f"rehearse: --set {item!r} must look like FIELD=VALUE, e.g. num_generations=8", file=sys.stderr)
            return 2
        try:
            overrides[field.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[field.strip()] = value
    config = TrainingConfig.for_profile(args.profile, **overrides)
    model_config = tunix_model_config(config)
    shape = tuple(int(x) for x in args.mesh.split(",")) if args.mesh else choose_mesh_shape(DEVICES, model_config)
    target = next((t for t in TARGETS if t["profile"] == args.profile), TARGETS[0])
    device_gib = args.device_gib or target["device_gib"] or 16.0
    began = time.perf_counter()
    print(f"rehearse: profile {config.profile!r}, {config.model} in {config.param_dtype}, "
          f"{DEVICES} simulated CPU devices, mesh (fsdp, tp) = {shape}; G={config.num_generations}, "
          f"micro batch {config.micro_batch_size} of mini batch {config.mini_batch_size}, β={config.beta}, "
          f"loss {config.grpo_loss_fn}, LoRA r={config.lora_rank}", flush=True)
    result: dict[str, Any] = {"profile": config.profile, "model": config.model, "mesh": shape,
                              "micro_batch_size": config.micro_batch_size, "G": config.num_generations,
                              "device_gib": device_gib, "margin": args.margin,
                              "hardware": f"{DEVICES} simulated CPU devices; XLA CPU memory analysis, not a TPU"}
    if args.compare_meshes:
        rows = []
        grpo = full_shapes(config)[1]
        for candidate in valid_mesh_shapes(DEVICES, model_config):
            figures = measure_update(grpo, config, model_mesh(config, candidate))
            rows.append(figures)
            print(f"mesh {candidate}: GRPO update peak {figures['peak'] / GIB:.2f} GiB per device "
                  f"(temporaries {figures['temp'] / GIB:.2f}, base weights {figures['base'] / GIB:.2f})", flush=True)
        result["meshes"] = rows
        _write(args.json, result)
        return 0

    mesh = model_mesh(config, shape)
    compiled = [measure_update(s, config, mesh) for s in full_shapes(config)]
    for figures in compiled:
        print(report(figures, "compiled at full size, not run"), flush=True)
    result["compiled"] = compiled

    guess = estimate(config, shape)
    sft, grpo = compiled
    reference = grpo["base"] if config.beta != 0 else 0  # a second copy of the base (RLCluster's reference)
    step_peak = grpo["peak"] + reference
    measured = max(sft["peak"], step_peak)
    rows = [("base weights", grpo["base"], guess["base weights"]),
            ("LoRA + optimiser state", grpo["lora"] + grpo["optimizer"],
             sum(v for k, v in guess.items() if k.startswith(("LoRA", "optimiser")))),
            ("reference model", reference, guess["reference model"]),
            ("update temporaries", grpo["temp"], guess.get("update temporaries", guess.get("logits of one micro-batch", 0.0))),
            ("GRPO update + reference", step_peak, guess.get("total", guess.get("total (lower bound)", 0.0)))]
    print("\nGRPO per device (GiB)        measured  course_utils.memory estimate")
    for name, value, estimated in rows:
        print(f"  {name:<26}{_gib(value)}   {estimated:7.3f}")
    print(f"  (the estimate's total also counts the rollouts' KV cache, {guess['KV cache for the rollouts']:.3f} GiB; "
          f"the reference is {'a second copy of the base weights, β > 0' if reference else 'absent at β = 0'})")
    print(f"SFT step peak {sft['peak'] / GIB:.3f} GiB per device")
    result.update(measured_peak_gib=measured / GIB, grpo_peak_gib=step_peak / GIB, sft_peak_gib=sft["peak"] / GIB,
                  estimate=guess)

    budget = device_gib * (1 - args.margin)
    fits = measured / GIB <= budget
    if not args.compile_only:
        cut = [Shape("sft", config.sft_batch_size, 0, args.exec_sft_length),
               Shape("grpo", config.micro_batch_size * config.num_generations, args.exec_prompt_length,
                     args.exec_generation_length)]
        print("\nexecuting at cut lengths (random weights and tokens; the full lengths do not fit this machine's RAM)",
              flush=True)
        ran = [measure_update(s, config, mesh, execute=True) for s in cut]
        for figures in ran:
            print(report(figures, "executed at cut lengths"), flush=True)
        result["executed"] = ran
        if not all(f["lora_changed"] > 0 and f["loss"] == f["loss"] for f in ran):
            print("rehearse: FAILED — an update did not change the LoRA weights or gave a NaN loss", file=sys.stderr)
            _write(args.json, result)
            return 1
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["seconds"] = round(time.perf_counter() - began, 1)
    print(f"\nrehearse: {result['seconds']} s, peak resident memory of this process {result['peak_rss_gib']:.2f} GiB")
    _write(args.json, result)
    verdict = (f"{measured / GIB:.2f} GiB per device of a {device_gib:g} GiB chip "
               f"(budget {budget:.1f} GiB with a {args.margin:.0%} margin)")
    if not fits:
        print(f"rehearse: DOES NOT FIT — {verdict}. Lower micro_batch_size (--micro-batch), G or the lengths.",
              file=sys.stderr)
        return 1
    print(f"rehearse: fits — {verdict}")
    return 0


def _write(path: Path | None, result: dict[str, Any]) -> None:
    if path:
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
