"""GRPO's policy loss with the output layer applied only where it is needed (part 06): Tunix's own
`grpo_loss_fn` on a view of the model whose output layer (Gemma 3's largest matrix) runs on the
completion only. Importing it registers "grpo_completion_head"; `config.grpo_loss_fn` names it."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from tunix.rl import algo_core, function_registry

NAME = "grpo_completion_head"


class CompletionHead(nnx.Module):
    """`model`, returning logits only for its last `keep` positions (same signature as Gemma 3)."""
    def __init__(self, model: Any, keep: int) -> None:
        self.model, self.keep = model, keep

    def __call__(self, tokens: Any, positions: Any = None, cache: Any = None, attention_mask: Any = None) -> Any:
        # the body (text only: Tunix passes images only to a model with them); its own logits go unused
        self.model(tokens, positions=positions, attention_mask=attention_mask, output_hidden_states=True)
        hidden = jax.tree.leaves(nnx.pop(self.model, nnx.Intermediate))  # after the final norm, [B, T, D]
        if len(hidden) != 1:
            raise RuntimeError(f"expected the model to sow one hidden-state array, found {len(hidden)}: "
                               "this Gemma 3 version differs from Tunix 0.1.7's")
        return self.model.embedder.decode(hidden[0][:, -self.keep:]), None


@function_registry.register_policy_loss_fn(NAME)
def completion_head_grpo_loss(model: Any, train_example: Any, algo_config: Any, pad_id: int, eos_id: int,
                              **kwargs: Any) -> tuple[Any, dict]:
    """Tunix's GRPO loss, with logits computed for the completion positions only."""
    keep = train_example.completion_ids.shape[1] + 1  # Tunix takes logits[:, -K-1:-1]
    return algo_core.grpo_loss_fn(CompletionHead(model, keep), train_example, algo_config, pad_id, eos_id, **kwargs)
