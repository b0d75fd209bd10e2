"""How much memory GRPO with LoRA needs, computed from the configuration (part 04).

`memory_table(config, mesh_shape)` lists what lives in device memory during a GRPO step:

* base weights — exact, from the shapes of the Tunix model and its sharding rules on the mesh;
* LoRA weights, their gradients and AdamW's two moments (same dtype as the weights);
* the KV cache for the rollouts: `global_batch_size × G` sequences of `cache_size` tokens;
* the reference model — a second copy of the base weights when β > 0 (Tunix warns that it does
  not share the actor's backbone), none at β = 0;
* the temporaries of the policy update of one micro batch (`micro_batch_size × G` sequences):
  logits over the vocabulary (the kept vocabulary with `vocab_trim`), activations, gradients
  and gathered weights, from a formula fitted to XLA's compiled memory analysis of Tunix's real
  train step (`python -m tools.rehearse` measures it at full size).

The rollouts' KV cache and the update's temporaries are not live at once, so the total
over-counts a little; the runtime itself comes on top. The fit is CPU XLA's buffer assignment on
simulated devices, not a TPU's.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from course_utils.config import TrainingConfig
from course_utils.env import weight_specs
from course_utils.model import tunix_model_config
from course_utils.vocab import KEPT_SIZE

GIB = 1024**3

# The course's targets (memory per device). The TPU runs the mesh course_utils.env.choose_mesh_shape
# picks for Gemma 3 1B on 8 chips: (2, 4). Kaggle no longer offers the TPU v3-8 (untested).
TARGETS = (
    {"name": "Gemma 3 1B-it on TPU v5e-8", "profile": "tpu", "mesh": (2, 4), "device_gib": 16.0,
     "devices": "8 TPU v5e chips, 16 GiB HBM each"},
    {"name": "Gemma 3 270M on CPU", "profile": "cpu", "mesh": (1, 1), "device_gib": None,
     "devices": "host RAM"},
)


def _bytes_per(dtype: Any) -> int:
    return int(np.dtype(dtype).itemsize)


def _shard_size(shape: tuple[int, ...], spec: Any, mesh_axes: dict[str, int]) -> int:
    size = 1
    spec = tuple(spec) if spec is not None else ()
    for i, dim in enumerate(shape):
        axes = spec[i] if i < len(spec) else None
        if axes is None:
            size *= dim
            continue
        divisor = math.prod(mesh_axes.get(a, 1) for a in ((axes,) if isinstance(axes, str) else axes))
        size *= math.ceil(dim / divisor)
    return size


def weight_counts(model_config: Any, mesh_shape: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """(total scalars, per-device scalars) of the base weights under Gemma 3's sharding rules."""
    axes = {"fsdp": mesh_shape[0], "tp": mesh_shape[1]}
    specs = weight_specs(model_config)
    return (sum(math.prod(shape) for _, shape, _ in specs),
            sum(_shard_size(shape, spec, axes) for _, shape, spec in specs))


# The update's temporaries per device, fitted (least squares on relative error, non-negative) to
# XLA's compiled memory analysis of Tunix's real train step (tools.rehearse:
# PeftTrainer._train_step under nnx.jit with the course's LoRA, loss and optimiser): 21 variants
# of the tiny model (vocabulary 8k/32k, 2/6 layers, widths 64/256, 4/8 heads, 192/384 tokens,
# 4-16 sequences, meshes (1, 1) and, on 8 simulated CPU devices, (2, 4), (4, 2), (8, 1), both GRPO
# losses) and Gemma 3 1B on (2, 4) at 16 and 8 sequences of 256 + 512 tokens (15.25 and 8.10 GiB;
# 7.10 GiB with grpo_completion_head). Within ±11 % of each on the meshes the course uses, (1, 1)
# and (2, 4); 20-35 % low on (4, 2) and (8, 1). tests/test_memory.py checks it on a shape it never
# saw. Bytes per unit of each `update_terms` term; CPU XLA's buffer assignment, not a TPU's.
UPDATE_FIT = {"logits": 3.42, "gathered logits": 0.82, "layers": 3.79, "attention": 1.94, "weights": 10.83}


def sequences_per_device(sequences: int, fsdp: int) -> int:
    """Rows of a batch each device holds: Tunix shards the batch on `fsdp` when it divides
    (`sharding_utils.shard_input`), else every device holds all of it."""
    return sequences // fsdp if sequences % fsdp == 0 else sequences


def update_terms(config: Any, model_config: Any, mesh_shape: tuple[int, int]) -> dict[str, float]:
    """The sizes (bytes per device) the update's temporaries grow with, for one GRPO micro batch
    of `micro_batch_size × G` sequences of prompt + completion tokens:

    * logits: the device's sequences × positions × vocabulary / tp × 4 B (positions: all tokens
      with Tunix's `grpo` loss, the completion + 1 with `grpo_completion_head`);
    * gathered logits: the same for all the micro batch's sequences when fsdp > 1: the output
      layer's width is sharded on `fsdp`, so XLA gathers the batch there (measured: on (8, 1)
      the update needs more than on (1, 1));
    * layers: sequences × tokens × layers × (width + MLP width / tp) × weight bytes (activations
      kept for the backward pass);
    * attention: sequences × tokens² × layers × query heads / tp × 4 B (the score matrices);
    * weights: what each device gathers of the base weights over `fsdp` (all of them / tp, less
      its own shard; none when fsdp = 1).
    """
    fsdp, tp = mesh_shape
    mc = model_config
    w = _bytes_per(mc.param_dtype)
    sequences = config.micro_batch_size * config.num_generations
    seq = sequences_per_device(sequences, fsdp)
    tokens = config.max_prompt_length + config.max_generation_length
    positions = config.max_generation_length + 1 if config.grpo_loss_fn == "grpo_completion_head" else tokens
    weights, weights_dev = weight_counts(mc, mesh_shape)
    return {
        "logits": seq * positions * math.ceil(mc.num_embed / tp) * 4.0,
        "gathered logits": sequences * positions * math.ceil(mc.num_embed / tp) * 4.0 if fsdp > 1 else 0.0,
        "layers": seq * tokens * mc.num_layers * (mc.embed_dim + math.ceil(mc.hidden_dim / tp)) * w,
        "attention": seq * tokens * tokens * mc.num_layers * math.ceil(mc.num_heads / tp) * 4.0,
        "weights": max(0.0, weights * w / tp - weights_dev * w),
    }


def lora_parameter_count(model_config: Any, rank: int) -> dict[str, int]:
    """LoRA scalars per target module, from the shapes alone (what qwix creates; checked in tests).

    Each adapter is A (inputs × r) and B (r × outputs): q_einsum D → N·H, kv_einsum D → 2·K·H,
    attn_vec_einsum N·H → D, gate/up D → F, down F → D; times the number of layers.
    """
    c = model_config
    d, f, n, k, h = c.embed_dim, c.hidden_dim, c.num_heads, c.num_kv_heads, c.head_dim
    per_layer = {
        "q_einsum": rank * (d + n * h),
        "kv_einsum": rank * (d + 2 * k * h),
        "attn_vec_einsum": rank * (n * h + d),
        "gate_proj": rank * (d + f),
        "up_proj": rank * (d + f),
        "down_proj": rank * (f + d),
    }
    return {name: size * c.num_layers for name, size in per_layer.items()}


def update_temporaries(config: Any, model_config: Any, mesh_shape: tuple[int, int]) -> float:
    """Bytes per device of the GRPO update's temporaries (activations, logits, their gradients,
    gathered weights): `update_terms` weighted by `UPDATE_FIT`."""
    terms = update_terms(config, model_config, mesh_shape)
    return sum(UPDATE_FIT[k] * v for k, v in terms.items())


def memory_table(config: Any, mesh_shape: tuple[int, int] = (1, 1)) -> list[dict[str, Any]]:
    """Rows {component, detail, total_gib, per_device_gib} for `config`'s model on `mesh_shape`."""
    mc = tunix_model_config(config)
    if getattr(config, "vocab_trim", False):  # only the kept embedding rows (course_utils.vocab)

        mc = dataclasses.replace(mc, num_embed=min(mc.num_embed, KEPT_SIZE))
    w = _bytes_per(mc.param_dtype)
    devices = mesh_shape[0] * mesh_shape[1]
    tp = mesh_shape[1]
    weights, weights_dev = weight_counts(mc, mesh_shape)
    lora = sum(lora_parameter_count(mc, config.lora_rank).values())
    g = config.num_generations
    rollouts = config.global_batch_size * g
    kv = rollouts * config.cache_size * mc.num_layers * 2 * mc.num_kv_heads * mc.head_dim * w
    micro = config.micro_batch_size * g
    seq = config.max_prompt_length + config.max_generation_length
    temporaries = update_temporaries(config, mc, mesh_shape)
    dtype = "bf16" if w == 2 else "f32"
    reference = weights * w if config.beta != 0 else 0
    rows = [
        ("base weights", f"{weights / 1e6:,.0f} M × {w} B ({dtype}), sharded on tp={tp}", weights * w, weights_dev * w),
        ("LoRA weights", f"r={config.lora_rank}: {lora / 1e6:.2f} M × {w} B (counted replicated)", lora * w, lora * w),
        ("LoRA gradients", "same size as the LoRA weights", lora * w, lora * w),
        ("optimiser state (AdamW)", "2 moments per LoRA weight + Tunix's gradient accumulator",
         3 * lora * w, 3 * lora * w),
        ("KV cache for the rollouts", f"{config.global_batch_size} prompts × G={g} × {config.cache_size} tokens × "
         f"{mc.num_layers} layers × K,V (replicated)", kv, kv),
        ("reference model", "none: β = 0, no KL term, no reference model" if config.beta == 0 else
         "a second copy of the base weights (β > 0; Tunix does not share the actor's)",
         reference, weights_dev * w if reference else 0),
        ("update temporaries", f"one micro batch: {micro} sequences × {seq} tokens (logits over "
         f"{mc.num_embed:,} words, activations, gradients), fitted to XLA's compiled analysis",
         temporaries * devices, temporaries),
    ]
    table = [{"component": c, "detail": d, "total_gib": t / GIB, "per_device_gib": p / GIB} for c, d, t, p in rows]
    table.append({"component": "total", "detail": f"{devices} device(s); runtime overheads come on top",
                  "total_gib": sum(r["total_gib"] for r in table),
                  "per_device_gib": sum(r["per_device_gib"] for r in table)})
    return table


def format_memory_table(table: list[dict[str, Any]], title: str = "", device_gib: float | None = None) -> str:
    """The table as text; with `device_gib`, a last line says whether one device holds it."""
    lines = [title] if title else []
    lines.append(f"{'component':<27}{'total GiB':>10}{'per device':>12}  detail")
    for row in table:
        lines.append(f"{row['component']:<27}{row['total_gib']:>10.3f}{row['per_device_gib']:>12.3f}  {row['detail']}")
    if device_gib:
        need = table[-1]["per_device_gib"]
        verdict = "fits" if need < device_gib else "does NOT fit"
        lines.append(f"-> {need:.2f} GiB of {device_gib:.0f} GiB per device: {verdict} "
                     f"({100 * need / device_gib:.0f} % before runtime overheads)")
    return "\n".join(lines)


def target_tables() -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(target, table) for 1B on a TPU v5e-8 and 270M on CPU, each with its profile's config."""
    return [(t, memory_table(TrainingConfig.for_profile(t["profile"]), t["mesh"])) for t in TARGETS]


def host_memory_gib() -> float:
    """This machine's RAM in GiB (the CPU profile's 'device')."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
