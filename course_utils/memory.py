"""How much device memory a GRPO step with LoRA needs, from the configuration (part 04). The KV
cache and the update's temporaries are not live at once: the total over-counts a little."""

from __future__ import annotations

import dataclasses
import math
import os
from itertools import zip_longest
from typing import Any

import numpy as np

from course_utils.config import TrainingConfig
from course_utils.env import weight_specs
from course_utils.model import tunix_model_config
from course_utils.vocab import KEPT_SIZE

GIB = 1024**3
# The course's targets; the TPU runs the mesh env.choose_mesh_shape picks for the 1B on 8 chips.
TARGETS = (
    {"name": "Gemma 3 1B-it on TPU v5e-8", "profile": "tpu", "mesh": (2, 4), "device_gib": 16.0,
     "devices": "8 TPU v5e chips, 16 GiB HBM each"},
    {"name": "Gemma 3 270M on CPU", "profile": "cpu", "mesh": (1, 1), "device_gib": None,
     "devices": "host RAM"},
)
# Bytes per unit of each term of the update's temporaries, fitted (least squares on relative error)
# to XLA's compiled analysis of Tunix's train step (tools.rehearse) for 21 tiny-model variants and
# Gemma 3 1B on (2, 4): within ±11 % on (1, 1) and (2, 4), 20-35 % low on (4, 2) and (8, 1). CPU
# XLA's buffer assignment, not a TPU's; tests/test_memory.py checks it on a shape it never saw.
UPDATE_FIT = {"logits": 3.42, "gathered logits": 0.82, "layers": 3.79, "attention": 1.94,
              "weights": 10.83}


def weight_counts(model_config: Any, mesh_shape: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """(total scalars, per-device scalars) of the base weights under Gemma 3's sharding rules."""
    sizes = {"fsdp": mesh_shape[0], "tp": mesh_shape[1]}

    def ways(axes: Any) -> int:  # a dimension's split: the product of its mesh axes' sizes
        return math.prod(sizes.get(a, 1) for a in ([axes] if isinstance(axes, str) else axes or []))

    specs = weight_specs(model_config)
    return (sum(math.prod(shape) for _, shape, _ in specs),
            sum(math.prod(math.ceil(dim / ways(axes)) for dim, axes in zip_longest(shape, spec))
                for _, shape, spec in specs))


def lora_parameter_count(model_config: Any, rank: int) -> dict[str, int]:
    """LoRA scalars per target module, from the shapes: A (inputs × r) and B (r × outputs) per
    layer (what qwix creates; checked in tests)."""
    c = model_config
    d, f, heads = c.embed_dim, c.hidden_dim, c.num_heads * c.head_dim
    sizes = {"q_einsum": d + heads, "kv_einsum": d + 2 * c.num_kv_heads * c.head_dim,
             "attn_vec_einsum": heads + d, "gate_proj": d + f, "up_proj": d + f, "down_proj": f + d}
    return {name: rank * size * c.num_layers for name, size in sizes.items()}


def memory_table(config: Any, mesh_shape: tuple[int, int] = (1, 1)) -> list[dict[str, Any]]:
    """Rows {component, detail, total_gib, per_device_gib} for `config`'s model on `mesh_shape`."""
    mc = tunix_model_config(config)
    if config.vocab_trim:  # only the kept embedding rows (course_utils.vocab)
        mc = dataclasses.replace(mc, num_embed=min(mc.num_embed, KEPT_SIZE))
    (fsdp, tp), devices = mesh_shape, math.prod(mesh_shape)
    w, g, layers = np.dtype(mc.param_dtype).itemsize, config.num_generations, mc.num_layers
    weights, weights_dev = weight_counts(mc, mesh_shape)
    lora = sum(lora_parameter_count(mc, config.lora_rank).values())
    prompts, cache, micro = config.global_batch_size, config.cache_size, config.micro_batch_size * g
    kv = prompts * g * cache * layers * 2 * mc.num_kv_heads * mc.head_dim * w
    # The update's temporaries per device for one micro batch (Tunix shards it on fsdp when fsdp
    # divides it): logits (gathered again when fsdp > 1), activations, attention, gathered weights.
    completion, seq = config.max_generation_length, micro // fsdp if micro % fsdp == 0 else micro
    tokens = config.max_prompt_length + completion
    positions = completion + 1 if config.grpo_loss_fn == "grpo_completion_head" else tokens
    logits = positions * math.ceil(mc.num_embed / tp) * 4.0
    terms = {"logits": seq * logits, "gathered logits": micro * logits if fsdp > 1 else 0.0,
             "layers": seq * tokens * layers * (mc.embed_dim + math.ceil(mc.hidden_dim / tp)) * w,
             "attention": seq * tokens * tokens * layers * math.ceil(mc.num_heads / tp) * 4.0,
             "weights": max(0.0, weights * w / tp - weights_dev * w)}
    temp = sum(UPDATE_FIT[k] * v for k, v in terms.items())
    reference = (weights * w, weights_dev * w) if config.beta else (0, 0)
    rows = [  # component, detail, bytes in all, bytes per device
        ("base weights", f"{weights / 1e6:,.0f} M × {w} B", weights * w, weights_dev * w),
        ("LoRA weights", f"r={config.lora_rank}: {lora / 1e6:.2f} M × {w} B", lora * w, lora * w),
        ("LoRA gradients", "as the LoRA weights", lora * w, lora * w),
        ("optimiser state (AdamW)", "2 moments, gradient accumulator", 3 * lora * w, 3 * lora * w),
        ("KV cache for the rollouts", f"{prompts} prompts × G={g} × {cache} tokens", kv, kv),
        ("reference model", "base weights (β > 0)" if config.beta else "none (β = 0)", *reference),
        ("update temporaries", f"{micro} sequences × {tokens} tokens", temp * devices, temp),
    ]
    rows.append(("total", f"{devices} device(s); the runtime comes on top", sum(r[2] for r in rows),
                 sum(r[3] for r in rows)))
    return [dict(component=c, detail=d, total_gib=t / GIB, per_device_gib=p / GIB)
            for c, d, t, p in rows]


def format_memory_table(table: list[dict[str, Any]], title: str = "", device_gib: float = 0) -> str:
    """The table as text; with `device_gib`, a last line says whether one device holds it."""
    lines = [title] if title else []
    lines.append(f"{'component':<27}{'total GiB':>10}{'per device':>12}  detail")
    for r in table:
        gib = f"{r['total_gib']:>10.3f}{r['per_device_gib']:>12.3f}"
        lines.append(f"{r['component']:<27}{gib}  {r['detail']}")
    if device_gib:
        need = table[-1]["per_device_gib"]
        lines.append(f"-> {need:.2f} GiB of {device_gib:.0f} GiB per device: "
                     f"{'fits' if need < device_gib else 'does NOT fit'} "
                     f"({100 * need / device_gib:.0f} % before runtime overheads)")
    return "\n".join(lines)


def target_tables() -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(target, table) for 1B on a TPU v5e-8 and 270M on CPU, each with its profile's config."""
    return [(t, memory_table(TrainingConfig.for_profile(t["profile"]), t["mesh"])) for t in TARGETS]


def host_memory_gib() -> float:
    """This machine's RAM in GiB (the CPU profile's 'device')."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
