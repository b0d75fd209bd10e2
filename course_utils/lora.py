"""LoRA adapters on Gemma 3 with qwix, and the trainable-parameter count (part 04).

The LoRA model shares the base model's weight arrays (nothing is copied), so the untouched base
serves as GRPO's reference model at no extra memory; B starts at zero, so at first it computes
exactly what the base computes.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import qwix
from flax import nnx
from tunix.rl import reshard

# Regular expression on module paths such as `layers/3/attn/q_einsum` (qwix matches it with re).
LORA_TARGETS = ("q_einsum", "kv_einsum", "attn_vec_einsum", "gate_proj", "up_proj", "down_proj")
LORA_MODULE_PATH = "|".join(f".*{name}" for name in LORA_TARGETS)


def apply_lora(model: Any, config: Any, mesh: Any = None, seed: int | None = None) -> Any:
    """The base model wrapped with qwix LoRA (rank `config.lora_rank`, alpha `config.lora_alpha`)
    on the attention projections and the MLP of every layer (parts 04, 06).

    `mesh` (default: the base weights' mesh, if any) places the new LoRA weights with the model's
    sharding rules; `seed` (default `config.seed`) initialises the A matrices.
    """
    if getattr(type(model), "_unquantized_type", None) is not None:
        raise ValueError("this model already has LoRA adapters: pass the base model to apply_lora.")
    provider = qwix.LoraProvider(module_path=LORA_MODULE_PATH, rank=config.lora_rank, alpha=float(config.lora_alpha))
    rngs = nnx.Rngs(config.seed if seed is None else seed)
    lora_model = qwix.apply_lora_to_model(model, provider, rngs=rngs, **model.get_model_input())
    missing = [name for name in LORA_TARGETS if not any(name in _path(p) for p, _ in _lora_leaves(lora_model))]
    if missing:
        raise RuntimeError(f"LoRA found no module named {missing}: is this a Gemma 3 model?")
    if mesh is None:
        shardings = [getattr(x, "sharding", None) for x in jax.tree.leaves(nnx.state(model))]
        mesh = next((s.mesh for s in shardings if isinstance(s, jax.sharding.NamedSharding)), None)
    return reshard.reshard_model_to_mesh(lora_model, mesh) if mesh is not None else lora_model


def _path(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _lora_leaves(model: Any) -> list[tuple[tuple, Any]]:
    return jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.LoRAParam))


def frozen_filter() -> Any:
    """The nnx filter of the frozen base weights (nnx.LoRAParam is a subclass of nnx.Param)."""
    return nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


def lora_state(model: Any) -> Any:
    """The LoRA weights only (an nnx State of LoRAParam): what training changes and saves."""
    return nnx.state(model, nnx.LoRAParam)


def parameter_counts(base: Any, lora: Any) -> dict[str, Any]:
    """Frozen "base", trainable "lora" and "total" scalars of a LoRA model built from `base`, its
    "trainable_percent", "lora_by_target" {q_einsum: ...} and "shares_base_weights" (part 04)."""
    base_leaves = jax.tree.leaves(nnx.state(base, frozen_filter()))
    by_target = dict.fromkeys(LORA_TARGETS, 0)
    for path, leaf in _lora_leaves(lora):
        name = next(t for t in sorted(LORA_TARGETS, key=len, reverse=True) if t in _path(path))
        by_target[name] += int(np.prod(leaf.shape))
    lora_base_leaves = jax.tree.leaves(nnx.state(lora, frozen_filter()))
    shared = len(base_leaves) == len(lora_base_leaves)
    shared = shared and all(a is b for a, b in zip(base_leaves, lora_base_leaves))
    base_count = int(sum(np.prod(x.shape) for x in base_leaves))
    lora_count = sum(by_target.values())
    total = base_count + lora_count
    return {"base": base_count, "lora": lora_count, "total": total, "lora_by_target": by_target,
            "trainable_percent": 100.0 * lora_count / total, "shares_base_weights": shared}
