"""Batched generation with Tunix's Sampler, and plain forward passes to check it (part 04)."""

from __future__ import annotations

import weakref
from typing import Any, Sequence

from course_utils.tokenizer import EOS_TOKENS, PAD_ID

# One Sampler per (model, tokenizer, cache size); it sees the model's Variables, trained in place.
_SAMPLERS: "weakref.WeakKeyDictionary[Any, dict[tuple, Any]]" = weakref.WeakKeyDictionary()


def make_sampler(model: Any, tokenizer: Any, model_config: Any, config: Any,
                 cache_size: int | None = None) -> Any:
    """A Tunix `Sampler` with a KV cache for the model, of `cache_size` or `config.cache_size`."""
    from tunix.generate.sampler import CacheConfig, Sampler

    mc = model_config
    cache = CacheConfig(cache_size=cache_size or config.cache_size, num_layers=mc.num_layers,
                        num_kv_heads=mc.num_kv_heads, head_dim=mc.head_dim)
    return Sampler(transformer=model, tokenizer=tokenizer, cache_config=cache)


def _sample(model: Any, tokenizer: Any, model_config: Any, prompts: Sequence[str], config: Any,
            new_tokens: int, **sampling: Any) -> Any:
    """The cached Sampler's output for `prompts`, left-padded to `config.max_prompt_length`,
    stopping at <eos> or <end_of_turn> (`eos_tokens=[1, 106]`)."""
    samplers, key = _SAMPLERS.setdefault(model, {}), (id(tokenizer), config.cache_size)
    if key not in samplers:
        samplers[key] = make_sampler(model, tokenizer, model_config, config)
    return samplers[key](list(prompts), max_generation_steps=new_tokens, echo=False,
                          eos_tokens=list(EOS_TOKENS), max_prompt_length=config.max_prompt_length,
                          **sampling)


def step_seed(base_seed: int, step: int) -> int:
    """A different sampling seed per step (Tunix's `seed=None` reuses PRNGKey(0) each call)."""
    return (int(base_seed) * 1_000_003 + int(step)) % (2**31 - 1)


def prompt_token_counts(tokenizer: Any, prompts: Sequence[str]) -> list[int]:
    """Tokens per prompt as the Sampler sees them (BOS included)."""
    return [len(tokenizer.encode(p)) + 1 for p in prompts]


def generate(model: Any, tokenizer: Any, model_config: Any, prompts: list[str], config: Any,
             greedy: bool = True, seed: int = 0, max_new_tokens: int | None = None,
             batch_size: int | None = None) -> list[str]:
    """Completions of `prompts` without the stop token (part 04): greedy, or sampled with the
    config's temperature, top_p, top_k and `seed` (one per step: `step_seed`). Batches of
    `batch_size` all have one shape (the last is filled up), so nothing recompiles."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a list of strings (course_utils.data.build_prompt); "
                        "wrap a single prompt as [prompt].")
    limit = config.max_prompt_length
    new_tokens = config.max_generation_length if max_new_tokens is None else int(max_new_tokens)
    if new_tokens < 1 or limit + new_tokens > config.cache_size:
        raise ValueError(f"max_new_tokens={new_tokens} must be >= 1, and max_prompt_length + it = "
                         f"{limit + new_tokens} within cache_size={config.cache_size}: lower "
                         "max_new_tokens or raise cache_size.")
    too_long = [(i, n) for i, n in enumerate(prompt_token_counts(tokenizer, prompts)) if n > limit]
    if too_long:
        raise ValueError(f"prompt {too_long[0][0]} has {too_long[0][1]} tokens, more than "
                         f"max_prompt_length={limit} ({len(too_long)} prompt(s) too long); "
                         "shorten it or raise max_prompt_length and cache_size.")
    sampled = not greedy and config.temperature > 0
    sampling = dict(temperature=config.temperature, top_p=config.top_p, seed=int(seed),
                    top_k=min(config.top_k, model_config.num_embed)) if sampled else {}
    size, texts = batch_size or max(len(prompts), 1), []
    for start in range(0, len(prompts), size):
        chunk = list(prompts[start:start + size])
        padded = chunk + [chunk[-1]] * (size - len(chunk))
        out = _sample(model, tokenizer, model_config, padded, config, new_tokens, **sampling)
        texts += out.text[:len(chunk)]
    return texts


def sampler_tokens(model: Any, tokenizer: Any, model_config: Any, prompts: list[str], config: Any,
                   max_new_tokens: int) -> list[list[int]]:
    """Greedy token ids from Tunix's Sampler, without the stop token (it cuts before it)."""
    out = _sample(model, tokenizer, model_config, prompts, config, max_new_tokens)
    return [[int(t) for t in seq] for seq in out.tokens]


def forward_logits(model: Any, tokens: Any, pad_id: int = PAD_ID) -> Any:
    """Logits [B, L, V] of a full forward pass without cache; `pad_id` positions are masked out and
    positions count real tokens only (as the Sampler's), so left padding shifts nothing."""
    import jax.numpy as jnp
    from tunix.generate.utils import build_positions_from_mask

    tokens = jnp.asarray(tokens, dtype=jnp.int32)
    mask = tokens != pad_id
    attention = model.get_attention_mask(tokens, inputs_mask=mask)
    logits, _ = model(tokens, build_positions_from_mask(mask), None, attention)
    return logits


# (graphdef, jitted forward): models of one structure share compilations (GraphDefs: not hashable).
_JITTED: list[tuple[Any, Any]] = []


def compiled_forward(model: Any) -> Any:
    """`forward_logits` for this model under jax.jit: `fn(tokens) -> logits`. (jax.jit over the
    split state: nnx.jit re-walks the graph on every call, about a second for the 270M.)"""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)
    run = next((fn for known, fn in _JITTED if known == graphdef), None)
    if run is None:
        run = jax.jit(lambda st, tokens, gd=graphdef: forward_logits(nnx.merge(gd, st), tokens))
        _JITTED.append((graphdef, run))
        del _JITTED[:-8]  # a handful of model structures at most
    return lambda tokens: run(state, tokens)
