"""GRPO's policy loss with the output layer applied only where it is needed (part 06).

Tunix 0.1.7's GRPO loss runs the actor on prompt + completion and takes the logits of every
position, [B, T, V], although only the completion positions enter the loss (and its logged
entropy). On Gemma 3 the output layer is the largest matrix of the model, so about half of
that work is thrown away. `grpo_completion_head` is the same loss — Tunix's own
`grpo_loss_fn`, called unchanged — on a view of the model whose output layer runs on the
last `completion length + 1` hidden states only. The transformer body is the model's own
`__call__` (so qwix's LoRA applies as usual); its full-length logits are never used, and XLA
drops them from the compiled step.

It is registered in Tunix's function registry (the extension point for policy losses) when
this module is imported; part 06's `GRPOConfig` cell imports it and names it with
`config.grpo_loss_fn` (the config accepts only registered names).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from tunix.rl import algo_core, function_registry

NAME = "grpo_completion_head"


class CompletionHead(nnx.Module):
    """`model`, returning logits only for its last `keep` positions (same signature as Gemma 3)."""

    def __init__(self, model: Any, keep: int) -> None:
        self.model = model
        self.keep = keep

    def __call__(self, last_tokens: Any, positions: Any = None, cache: Any = None, attention_mask: Any = None,
                 *, images: Any = None) -> tuple[Any, None]:
        extra = {} if images is None else {"images": images}
        _, _ = self.model(last_tokens, positions=positions, cache=None, attention_mask=attention_mask,
                          output_hidden_states=True, **extra)
        sown = nnx.pop(self.model, nnx.Intermediate)
        hidden = _only_leaf(sown)  # after the final norm, [B, T, D]
        return self.model.embedder.decode(hidden[:, -self.keep:]), None


def _only_leaf(state: Any) -> Any:
    leaves = jax.tree.leaves(state)
    if len(leaves) != 1:
        raise RuntimeError(f"expected the model to sow one hidden-state array, found {len(leaves)}: "
                           "this Gemma 3 version differs from Tunix 0.1.7's")
    return leaves[0]


@function_registry.register_policy_loss_fn(NAME)
def completion_head_grpo_loss(model: Any, train_example: Any, algo_config: Any, pad_id: int, eos_id: int,
                              **kwargs: Any) -> tuple[Any, dict]:
    """Tunix's GRPO loss, with logits computed for the completion positions only."""
    keep = train_example.completion_ids.shape[1] + 1  # Tunix takes logits[:, -K-1:-1]
    return algo_core.grpo_loss_fn(CompletionHead(model, keep), train_example, algo_config, pad_id, eos_id, **kwargs)
