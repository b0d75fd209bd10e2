"""Batched generation with Tunix's Sampler, and plain forward passes to check it (part 04).

`generate(...)` is what every later part uses to read the model's answers: left-padded
batches through `tunix.generate.sampler.Sampler` with its KV cache, stopping at `<eos>` or
`<end_of_turn>` (`eos_tokens=[1, 106]`), greedy or sampled with an explicit seed per call.

The test suite checks the Sampler (`sampler_tokens`) token for token against a deliberately
naive loop over `compiled_forward` (one prompt at a time, no padding, no cache): evidence that
padding, positions, masks and cache are right.

`forward_logits` / `compiled_forward` run the plain model on a token batch (perplexity,
log-probabilities, checks).
"""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import numpy as np

from course_utils.tokenizer import BOS_ID, EOS_TOKENS, PAD_ID

# One Sampler per (model, tokenizer, cache size): each Sampler compiles its own functions.
_SAMPLERS: "weakref.WeakKeyDictionary[Any, dict[tuple, Any]]" = weakref.WeakKeyDictionary()


def make_sampler(model: Any, tokenizer: Any, model_config: Any, config: Any, cache_size: int | None = None) -> Any:
    """A Tunix `Sampler` whose KV cache matches the model (Gemma 3 has no `init_cache` in 0.1.7).

    `cache_size` defaults to `config.cache_size`, which must hold prompt + generation.
    """
    from tunix.generate.sampler import CacheConfig, Sampler

    cache = CacheConfig(
        cache_size=cache_size or config.cache_size,
        num_layers=model_config.num_layers,
        num_kv_heads=model_config.num_kv_heads,
        head_dim=model_config.head_dim,
    )
    return Sampler(transformer=model, tokenizer=tokenizer, cache_config=cache)


def _cached_sampler(model: Any, tokenizer: Any, model_config: Any, config: Any) -> Any:
    # A Sampler holds the model's own nnx Variables, so training the model in place (optimizer
    # updates, restored LoRA weights) is seen by the cached Sampler without rebuilding it.
    per_model = _SAMPLERS.setdefault(model, {})
    key = (id(tokenizer), config.cache_size)
    sampler = per_model.get(key)
    if sampler is None:
        sampler = per_model[key] = make_sampler(model, tokenizer, model_config, config)
    return sampler


def step_seed(base_seed: int, step: int) -> int:
    """A different sampling seed for every step (Tunix's `seed=None` reuses PRNGKey(0) each call)."""
    return (int(base_seed) * 1_000_003 + int(step)) % (2**31 - 1)


def prompt_token_counts(tokenizer: Any, prompts: Sequence[str]) -> list[int]:
    """Tokens per prompt as the Sampler sees them (BOS included)."""
    return [len(tokenizer.encode(p)) + 1 for p in prompts]


def generate(
    model: Any,
    tokenizer: Any,
    model_config: Any,
    prompts: list[str],
    config: Any,
    greedy: bool = True,
    seed: int = 0,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    sampler: Any = None,
) -> list[str]:
    """Completions of `prompts` (texts after the prompt, without the stop token) (part 04).

    Greedy by default; `greedy=False` samples with `config.temperature`, `top_p`, `top_k` and
    `seed` (pass a different seed each step, e.g. `step_seed(config.seed, step)`). Prompts are
    padded to `config.max_prompt_length` so shapes, hence compiled code, stay the same;
    `batch_size` splits long lists (the last batch is filled up to keep its shape).
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string: wrap it as [prompt].")
    if not prompts:
        return []
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError("every prompt must be a str (build them with course_utils.data.build_prompt).")
    new_tokens = config.max_generation_length if max_new_tokens is None else int(max_new_tokens)
    if new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if config.max_prompt_length + new_tokens > config.cache_size:
        raise ValueError(
            f"max_prompt_length + max_new_tokens = {config.max_prompt_length} + {new_tokens} exceeds "
            f"cache_size={config.cache_size}; lower max_new_tokens or raise cache_size in the config."
        )
    counts = prompt_token_counts(tokenizer, prompts)
    too_long = [(i, n) for i, n in enumerate(counts) if n > config.max_prompt_length]
    if too_long:
        i, n = too_long[0]
        raise ValueError(
            f"prompt {i} has {n} tokens, more than max_prompt_length={config.max_prompt_length} "
            f"({len(too_long)} prompt(s) too long); shorten it or raise max_prompt_length and cache_size."
        )
    sampler = sampler or _cached_sampler(model, tokenizer, model_config, config)
    sampled = not greedy and config.temperature > 0
    kwargs: dict[str, Any] = dict(
        max_generation_steps=new_tokens,
        max_prompt_length=config.max_prompt_length,
        eos_tokens=list(EOS_TOKENS),
        echo=False,
    )
    if sampled:
        kwargs.update(temperature=config.temperature, top_p=config.top_p,
                      top_k=min(config.top_k, model_config.num_embed), seed=int(seed))
    size = batch_size or len(prompts)
    texts: list[str] = []
    for start in range(0, len(prompts), size):
        chunk = list(prompts[start:start + size])
        real = len(chunk)
        chunk += [chunk[-1]] * (size - real)  # same shape for every batch: no recompilation
        out = sampler(chunk, **kwargs)
        texts.extend(out.text[:real])
    return texts


# --- plain forward passes (no cache), for checks and perplexity ---------------------------------------
def forward_logits(model: Any, tokens: Any, pad_id: int = PAD_ID) -> Any:
    """Logits [B, L, V] of a full forward pass without cache; `pad_id` positions are masked out.

    Positions count real tokens only (as the Sampler does), so left padding does not shift them.
    """
    import jax.numpy as jnp
    from tunix.generate.utils import build_positions_from_mask

    tokens = jnp.asarray(tokens, dtype=jnp.int32)
    mask = tokens != pad_id
    positions = build_positions_from_mask(mask)
    attention = model.get_attention_mask(tokens, inputs_mask=mask)
    logits, _ = model(tokens, positions, None, attention)
    return logits


# (graphdef, jitted forward): models of the same structure (a clone, a LoRA model built again)
# share compilations. GraphDefs compare equal but are not hashable, hence a list.
_JITTED: list[tuple[Any, Any]] = []


def compiled_forward(model: Any) -> Any:
    """`forward_logits` for this model compiled with jax.jit: `fn(tokens) -> logits`.

    One compilation per model structure and input shape; much faster than running the model
    op by op. (jax.jit over the split state: nnx.jit re-walks the model's graph on every call,
    about a second for the 270M, which would dominate a token-by-token loop.)
    """
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)
    run = next((fn for known, fn in _JITTED if known == graphdef), None)
    if run is None:
        run = jax.jit(lambda state, tokens, graphdef=graphdef: forward_logits(nnx.merge(graphdef, state), tokens))
        _JITTED.append((graphdef, run))
        del _JITTED[:-8]  # a handful of model structures at most
    return lambda tokens: run(state, tokens)


def sampler_tokens(
    model: Any, tokenizer: Any, model_config: Any, prompts: list[str], config: Any, max_new_tokens: int
) -> list[list[int]]:
    """Greedy token ids from Tunix's Sampler (batched, left-padded, KV cache), stop token removed."""
    sampler = _cached_sampler(model, tokenizer, model_config, config)
    out = sampler(
        list(prompts), max_generation_steps=max_new_tokens, max_prompt_length=config.max_prompt_length,
        eos_tokens=list(EOS_TOKENS), echo=False,
    )
    return [[int(t) for t in seq] for seq in out.tokens]  # the Sampler cuts before the stop token
