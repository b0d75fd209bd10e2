"""LoRA adapters on Gemma 3 with qwix, and the trainable-parameter table (part 04).

`apply_lora(model, config)` puts rank-`r` adapters (scale α / r) on the attention projections
(`q_einsum`, `kv_einsum`, `attn_vec_einsum`) and the MLP (`gate_proj`, `up_proj`, `down_proj`)
of every layer. The returned model is a new module object that shares the base model's weight
arrays (JAX arrays are immutable; nothing is copied), so the untouched base model serves as
GRPO's reference model at no extra memory. LoRA's B matrices start at zero: at initialisation
the LoRA model computes exactly what the base model computes.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import qwix
from flax import nnx
from tunix.rl import reshard

from course_utils.config import TrainingConfig
from course_utils.memory import lora_parameter_count, weight_counts  # noqa: F401 (lora_parameter_count: part 04's name)
from course_utils.model import tunix_model_config

# Regular expression on module paths such as `layers/3/attn/q_einsum` (qwix matches it with re).
LORA_TARGETS = ("q_einsum", "kv_einsum", "attn_vec_einsum", "gate_proj", "up_proj", "down_proj")
LORA_MODULE_PATH = "|".join(f".*{name}" for name in LORA_TARGETS)


def apply_lora(model: Any, config: Any, mesh: Any = None, seed: int | None = None) -> Any:
    """The base model wrapped with qwix LoRA (rank `config.lora_rank`, alpha `config.lora_alpha`).

    `mesh` (default: the mesh the base weights live on, if any) places the new LoRA weights
    with the model's sharding rules. `seed` (default `config.seed`) initialises the A matrices.
    """
    if getattr(type(model), "_unquantized_type", None) is not None:
        raise ValueError("this model already has LoRA adapters: pass the base model to apply_lora.")
    provider = qwix.LoraProvider(module_path=LORA_MODULE_PATH, rank=config.lora_rank, alpha=float(config.lora_alpha))
    inputs = model.get_model_input()
    lora_model = qwix.apply_lora_to_model(
        model, provider, rngs=nnx.Rngs(config.seed if seed is None else seed), **inputs
    )
    missing = [name for name in LORA_TARGETS if not any(name in _path(p) for p, _ in _lora_leaves(lora_model))]
    if missing:
        raise RuntimeError(f"LoRA found no module named {missing}: is this a Gemma 3 model?")
    mesh = mesh if mesh is not None else _mesh_of(model)
    if mesh is not None:
        lora_model = reshard.reshard_model_to_mesh(lora_model, mesh)
    return lora_model


def _path(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _lora_leaves(model: Any) -> list[tuple[tuple, Any]]:
    return jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.LoRAParam))


def _mesh_of(model: Any) -> Any:
    for leaf in jax.tree.leaves(nnx.state(model, frozen_filter())):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
            return sharding.mesh
    return None


def frozen_filter() -> Any:
    """The nnx filter of the frozen base weights (nnx.LoRAParam is a subclass of nnx.Param)."""
    return nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


def lora_state(model: Any) -> Any:
    """The LoRA weights only (an nnx State of LoRAParam): what training changes and saves."""
    return nnx.state(model, nnx.LoRAParam)


def parameter_counts(base: Any, lora: Any) -> dict[str, Any]:
    """Trainable (LoRA) vs total parameters of a LoRA model built from `base`.

    Returns {"base": frozen base scalars, "lora": trainable scalars, "total": both,
    "trainable_percent": 100 * lora / total, "lora_by_target": {q_einsum: ..., ...},
    "shares_base_weights": whether the LoRA model reuses the base's arrays}.
    """
    base_state = nnx.state(base, frozen_filter())
    base_count = int(sum(np.prod(x.shape) for x in jax.tree.leaves(base_state)))
    by_target = dict.fromkeys(LORA_TARGETS, 0)
    lora_count = 0
    for path, leaf in _lora_leaves(lora):
        size = int(np.prod(leaf.shape))
        lora_count += size
        name = next((t for t in sorted(LORA_TARGETS, key=len, reverse=True) if t in _path(path)), None)
        if name:
            by_target[name] += size
    base_leaves = jax.tree.leaves(base_state)
    lora_base_leaves = jax.tree.leaves(nnx.state(lora, frozen_filter()))
    shared = len(base_leaves) == len(lora_base_leaves) and all(
        a is b for a, b in zip(base_leaves, lora_base_leaves)
    )
    total = base_count + lora_count
    return {
        "base": base_count,
        "lora": lora_count,
        "total": total,
        "trainable_percent": 100.0 * lora_count / total if total else 0.0,
        "lora_by_target": by_target,
        "shares_base_weights": shared,
    }


def format_parameter_table(counts: dict[str, Any], title: str = "") -> str:
    """The parameter counts as a small text table for the notebook."""
    lines = [title] if title else []
    lines.append(f"{'part':<28}{'parameters':>16}")
    lines.append(f"{'base model (frozen)':<28}{counts['base']:>16,}")
    for name, size in counts["lora_by_target"].items():
        lines.append(f"{'  LoRA on ' + name:<28}{size:>16,}")
    lines.append(f"{'LoRA (trainable)':<28}{counts['lora']:>16,}")
    lines.append(f"{'total':<28}{counts['total']:>16,}")
    lines.append(f"{'trainable share':<28}{counts['trainable_percent']:>15.3f}%")
    return "\n".join(lines)


def parameter_counts_by_profile(profiles: tuple[str, ...] = ("smoke", "cpu", "tpu")) -> list[dict[str, Any]]:
    """Trainable vs total parameters for each profile's model and LoRA rank, from shapes alone
    (nothing is loaded): rows {profile, model, rank, lora, total, trainable_percent}."""
    rows = []
    for name in profiles:
        config = TrainingConfig.for_profile(name)
        model_config = tunix_model_config(config)
        lora = sum(lora_parameter_count(model_config, config.lora_rank).values())
        total = weight_counts(model_config)[0] + lora
        rows.append({"profile": name, "model": config.model, "rank": config.lora_rank, "lora": lora,
                     "total": total, "trainable_percent": 100.0 * lora / total})
    return rows
