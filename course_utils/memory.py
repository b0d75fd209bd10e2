"""How much memory GRPO with LoRA needs, computed from the configuration (part 04).

`memory_table(config, mesh_shape)` lists what lives in device memory during a GRPO step:

* base weights — exact, from the shapes of the Tunix model and its sharding rules on the mesh;
* LoRA weights, their gradients and AdamW's two moments (same dtype as the weights);
* the KV cache for the rollouts: `global_batch_size × G` sequences of `cache_size` tokens;
* the reference model — shared with the LoRA model's frozen base, so no extra copy (none at β = 0);
* the logits of one micro-batch forward pass (policy or reference), the largest activation:
  `micro_batch_size × G × (prompt + generation) × vocabulary` float32 numbers (the kept
  vocabulary with `vocab_trim`).

These are lower bounds: compiled programs, temporaries and the runtime itself come on top
(on a 2-core CPU the measured peak of GRPO on the 270M is several GB above this table).
"""

from __future__ import annotations

import math
from typing import Any

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
    import numpy as np

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
    c = model_config
    key = (c.num_layers, c.num_embed, c.embed_dim, c.hidden_dim, c.num_heads, c.head_dim, c.num_kv_heads,
           c.vision_config is None, tuple(mesh_shape))
    if key not in _WEIGHT_COUNTS:
        _WEIGHT_COUNTS[key] = _weight_counts(model_config, tuple(mesh_shape))
    return _WEIGHT_COUNTS[key]


_WEIGHT_COUNTS: dict[tuple, tuple[int, int]] = {}


def _weight_counts(model_config: Any, mesh_shape: tuple[int, int]) -> tuple[int, int]:
    import jax
    from flax import nnx

    from course_utils.model import abstract_model

    state = nnx.state(abstract_model(model_config), nnx.Param)
    specs = nnx.get_partition_spec(state)
    mesh_axes = {"fsdp": mesh_shape[0], "tp": mesh_shape[1]}
    total = per_device = 0
    for leaf, spec in zip(jax.tree.leaves(state), jax.tree.leaves(specs, is_leaf=lambda x: x is None or isinstance(x, jax.sharding.PartitionSpec))):
        total += math.prod(leaf.shape)
        per_device += _shard_size(tuple(leaf.shape), spec, mesh_axes)
    return total, per_device


def memory_table(config: Any, mesh_shape: tuple[int, int] = (1, 1)) -> list[dict[str, Any]]:
    """Rows {component, detail, total_gib, per_device_gib} for `config`'s model on `mesh_shape`."""
    from course_utils.lora import lora_parameter_count
    from course_utils.model import tunix_model_config

    mc = tunix_model_config(config)
    if getattr(config, "vocab_trim", False):  # only the kept embedding rows (course_utils.vocab)
        import dataclasses

        from course_utils.vocab import KEPT_SIZE

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
    logits = micro * seq * mc.num_embed * 4
    dtype = "bf16" if w == 2 else "f32"
    rows = [
        ("base weights", f"{weights / 1e6:,.0f} M × {w} B ({dtype}), sharded on tp={tp}", weights * w, weights_dev * w),
        ("LoRA weights", f"r={config.lora_rank}: {lora / 1e6:.2f} M × {w} B (replicated)", lora * w, lora * w),
        ("LoRA gradients", "same size as the LoRA weights", lora * w, lora * w),
        ("optimiser state (AdamW)", "2 moments per LoRA weight", 2 * lora * w, 2 * lora * w),
        ("KV cache for the rollouts", f"{config.global_batch_size} prompts × G={g} × {config.cache_size} tokens × "
         f"{mc.num_layers} layers × K,V (replicated)", kv, kv),
        ("reference model", "none: β = 0, no KL term" if config.beta == 0 else
         f"shares the frozen base weights (a copy would be {weights * w / GIB:.2f} GiB)", 0, 0),
        ("logits of one micro-batch", f"{micro} sequences × {seq} tokens × {mc.num_embed:,} words × 4 B, "
         f"vocabulary sharded on tp={tp}", logits, logits / tp),
    ]
    table = [{"component": c, "detail": d, "total_gib": t / GIB, "per_device_gib": p / GIB} for c, d, t, p in rows]
    table.append({"component": "total (lower bound)", "detail": f"{devices} device(s)",
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
    from course_utils.config import TrainingConfig

    return [(t, memory_table(TrainingConfig.for_profile(t["profile"]), t["mesh"])) for t in TARGETS]


def host_memory_gib() -> float:
    """This machine's RAM in GiB (the CPU profile's 'device')."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
