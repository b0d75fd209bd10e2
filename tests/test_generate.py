"""course_utils.generate: Tunix's Sampler agrees with a plain forward loop; stop tokens, seeds (part 04)."""

import numpy as np
import pytest
from tunix.generate import sampler as sampler_lib

from course_utils.config import TrainingConfig
from course_utils.generate import (
    compiled_forward,
    generate,
    make_sampler,
    prompt_token_counts,
    sampler_tokens,
    step_seed,
)
from course_utils.tokenizer import BOS_ID, EOS_TOKENS, PAD_ID

# Different lengths (13, 27 and 2 tokens with BOS), so the batch is left-padded.
PROMPTS = [
    "The capital of France is Paris. The capital of Italy is",
    "<start_of_turn>user\nWhat is 12 + 30? Answer with a number.<end_of_turn>\n<start_of_turn>model\n",
    "Water",
]
NEW_TOKENS = 6


def greedy_reference(model, tokenizer, prompts, max_new_tokens, eos_tokens=EOS_TOKENS):
    """Greedy token ids by the plainest loop: per prompt, BOS + prompt, no padding of the prompt,
    no KV cache: the full sequence through the model for every new token. The sequence lives in
    a right-padded buffer of fixed length (pads are masked, causal attention never looks right),
    so the forward pass compiles once."""
    run = compiled_forward(model)
    encoded = [[BOS_ID, *tokenizer.encode(prompt)] for prompt in prompts]
    length = max(len(ids) for ids in encoded) + max_new_tokens
    results = []
    for ids in encoded:
        buffer = np.full((1, length), PAD_ID, dtype=np.int32)
        buffer[0, : len(ids)] = ids
        out = []
        for step in range(max_new_tokens):
            last = len(ids) + step - 1
            token = int(np.argmax(np.asarray(run(buffer))[0, last]))
            if token in eos_tokens:
                break
            out.append(token)
            buffer[0, last + 1] = token
        results.append(out)
    return results


def test_sampler_greedy_equals_a_plain_forward_loop(cpu_loaded, short_cpu_config):
    lm = cpu_loaded
    counts = prompt_token_counts(lm.tokenizer, PROMPTS)
    assert len(set(counts)) == len(PROMPTS) and max(counts) <= short_cpu_config.max_prompt_length
    batched = sampler_tokens(lm.model, lm.tokenizer, lm.model_config, PROMPTS, short_cpu_config, NEW_TOKENS)
    plain = greedy_reference(lm.model, lm.tokenizer, PROMPTS, NEW_TOKENS)
    assert batched == plain
    assert all(len(t) == NEW_TOKENS for t in plain)  # the base model did not stop early here
    # ... and it is the real model: it knows its capitals.
    assert lm.tokenizer.decode(batched[0]).startswith(" Rome")


def test_generate_returns_the_same_greedy_text(cpu_loaded, short_cpu_config):
    lm = cpu_loaded
    texts = generate(lm.model, lm.tokenizer, lm.model_config, PROMPTS, short_cpu_config, max_new_tokens=NEW_TOKENS)
    plain = greedy_reference(lm.model, lm.tokenizer, PROMPTS[:1], NEW_TOKENS)
    assert texts[0] == lm.tokenizer.decode(plain[0]) and len(texts) == len(PROMPTS)


def test_generate_passes_gemma_stop_tokens_and_batches_consistently(tiny_loaded, monkeypatch):
    config = TrainingConfig.for_profile("smoke")
    seen = []
    original = sampler_lib.Sampler.__call__

    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sampler_lib.Sampler, "__call__", spy)
    lm = tiny_loaded
    prompts = ["one", "two two", "three three three"]
    split = generate(lm.model, lm.tokenizer, lm.model_config, prompts, config, batch_size=2, max_new_tokens=4)
    assert [k["eos_tokens"] for k in seen] == [[1, 106], [1, 106]] and EOS_TOKENS == (1, 106)
    assert all(k["max_prompt_length"] == config.max_prompt_length for k in seen)
    whole = generate(lm.model, lm.tokenizer, lm.model_config, prompts, config, max_new_tokens=4)
    assert whole == split and len(whole) == 3


def test_greedy_reference_stops_at_a_stop_token(tiny_loaded):
    lm = tiny_loaded
    free = greedy_reference(lm.model, lm.tokenizer, ["Hello"], 4, eos_tokens=())
    stopped = greedy_reference(lm.model, lm.tokenizer, ["Hello"], 4, eos_tokens=(free[0][2],))
    assert stopped[0] == free[0][: free[0].index(free[0][2])]


def test_sampling_depends_on_the_seed_and_only_on_it(tiny_loaded):
    lm = tiny_loaded
    config = TrainingConfig.for_profile("smoke")  # temperature 0.9, top_k 8
    prompts = ["Natalia sold clips.", "Water", "one"]
    run = lambda seed: generate(lm.model, lm.tokenizer, lm.model_config, prompts, config, greedy=False,
                                seed=seed, max_new_tokens=4)
    first, again, other = run(1), run(1), run(2)
    assert first == again
    assert first != other
    greedy = generate(lm.model, lm.tokenizer, lm.model_config, prompts, config, max_new_tokens=4)
    cold = TrainingConfig.for_profile("smoke", temperature=0.0)
    assert generate(lm.model, lm.tokenizer, lm.model_config, prompts, cold, greedy=False, seed=5, max_new_tokens=4) == greedy


def test_step_seed_differs_per_step_and_run():
    seeds = {step_seed(42, s) for s in range(100)}
    assert len(seeds) == 100 and step_seed(42, 3) == step_seed(42, 3) != step_seed(43, 3)


def test_generate_rejects_bad_input_with_the_fix(tiny_loaded):
    lm = tiny_loaded
    config = TrainingConfig.for_profile("smoke")
    args = (lm.model, lm.tokenizer, lm.model_config)
    with pytest.raises(TypeError, match="list"):
        generate(*args, "a prompt", config)
    with pytest.raises(ValueError, match="max_prompt_length"):
        generate(*args, ["word " * 200], config)
    with pytest.raises(ValueError, match="cache_size"):
        generate(*args, ["hi"], config, max_new_tokens=config.cache_size)
    assert generate(*args, [], config) == []


def test_make_sampler_cache_matches_the_model(cpu_loaded, short_cpu_config):
    sampler = make_sampler(cpu_loaded.model, cpu_loaded.tokenizer, cpu_loaded.model_config, short_cpu_config)
    cache = sampler.cache_config
    assert (cache.cache_size, cache.num_layers, cache.num_kv_heads, cache.head_dim) == (40, 18, 1, 256)
    assert sampler.tokenizer.bos_id() == 2  # not -1: the sampler prepends a real <bos>
