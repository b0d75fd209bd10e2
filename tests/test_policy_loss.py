"""GRPO without full-vocabulary work nothing needs (part 06): the completion-head loss equals
Tunix's own, there is no reference model when β = 0, and part 06's lesson on reading the loss
at μ = 1 holds for Tunix's own loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tunix.rl import algo_core, common, function_registry
from tunix.rl.grpo.grpo_learner import GRPOConfig

from course_utils import policy_loss
from course_utils.config import TrainingConfig
from course_utils.lora import apply_lora


def _example(vocab: int, rng: np.random.Generator, with_reference: bool) -> common.TrainExample:
    batch, prompt, completion = 4, 12, 9
    prompt_ids = rng.integers(3, vocab, (batch, prompt)).astype(np.int32)
    prompt_ids[:2, :3] = 0  # left padding
    completion_ids = rng.integers(3, vocab, (batch, completion)).astype(np.int32)
    completion_ids[1, 6:] = 0  # a short completion, right padded
    completion_mask = (completion_ids != 0).astype(np.int32)
    return common.TrainExample(
        prompt_ids=jnp.asarray(prompt_ids), prompt_mask=jnp.asarray(prompt_ids != 0),
        completion_ids=jnp.asarray(completion_ids), completion_mask=jnp.asarray(completion_mask),
        advantages=jnp.asarray(rng.normal(size=batch), jnp.float32),
        ref_per_token_logps=jnp.asarray(rng.normal(-8, 1, (batch, completion)), jnp.float32) if with_reference else None,
        old_per_token_logps=jnp.asarray(rng.normal(-8, 1, (batch, completion)), jnp.float32),
    )


@pytest.fixture(scope="module")
def lora_tiny(tiny_loaded):
    config = TrainingConfig.for_profile("smoke")
    model = apply_lora(tiny_loaded.model, config)
    # B starts at 0; give the adapters values so that a LoRA the loss ignored would show.
    state = nnx.state(model, nnx.LoRAParam)
    keys = iter(jax.random.split(jax.random.PRNGKey(0), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda x: 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), state))
    return model, tiny_loaded.model_config.num_embed


@pytest.mark.parametrize("beta", [0.2])
def test_loss_aux_and_lora_gradients_equal_tunix_grpo(lora_tiny, beta):
    model, vocab = lora_tiny
    example = _example(vocab, np.random.default_rng(int(beta * 10)), with_reference=beta > 0)
    algo = GRPOConfig(num_generations=2, beta=beta, epsilon=0.2, kl_loss_mode="low_var_kl")
    algo.temperature = 0.7
    theirs = function_registry.get_policy_loss_fn("grpo")
    ours = function_registry.get_policy_loss_fn(policy_loss.NAME)
    assert ours is policy_loss.completion_head_grpo_loss and theirs is algo_core.grpo_loss_fn

    def run(loss_fn):
        def f(m):
            return loss_fn(m, example, algo, pad_id=0, eos_id=1)
        (loss, aux), grads = nnx.value_and_grad(f, argnums=nnx.DiffState(0, nnx.LoRAParam), has_aux=True)(model)
        return loss, aux, grads

    loss_a, aux_a, grads_a = run(theirs)
    loss_b, aux_b, grads_b = run(ours)
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert aux_a.keys() == aux_b.keys()
    for key in aux_a:
        np.testing.assert_allclose(aux_b[key], aux_a[key], rtol=1e-4, atol=1e-5, err_msg=key)
    leaves_a, leaves_b = jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)
    assert len(leaves_a) == len(leaves_b) > 0
    assert max(float(jnp.abs(g).max()) for g in leaves_a) > 0  # the LoRA weights do get a gradient
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_completion_head_returns_the_last_positions_logits(lora_tiny):
    model, vocab = lora_tiny
    tokens = jnp.asarray(np.random.default_rng(3).integers(3, vocab, (2, 10)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(10), (2, 10))
    mask = jnp.tril(jnp.ones((10, 10), bool))[None].repeat(2, 0)
    full, _ = model(tokens, positions=positions, cache=None, attention_mask=mask)
    head, _ = policy_loss.CompletionHead(model, 4)(tokens, positions=positions, attention_mask=mask)
    assert head.shape == (2, 4, vocab)
    np.testing.assert_allclose(head, full[:, -4:], rtol=1e-5, atol=1e-5)
    assert not jax.tree.leaves(nnx.state(model, nnx.Intermediate))  # nothing left behind on the model


def test_part_06s_grpo_config_uses_the_registered_loss_and_the_config_refuses_unknown_ones():
    from course_utils import training

    config = TrainingConfig.for_profile("smoke", grpo_loss_fn=policy_loss.NAME)
    algo = training.run_cells(["grpo_config"], config=config)["grpo_config"]
    assert algo.policy_loss_fn == policy_loss.NAME and algo.num_generations == config.num_generations
    assert function_registry.get_policy_loss_fn(algo.policy_loss_fn) is policy_loss.completion_head_grpo_loss
    with pytest.raises(ValueError, match="grpo_loss_fn"):
        TrainingConfig.for_profile("smoke", grpo_loss_fn="no_such_loss")


@pytest.mark.parametrize("mode", ["sequence-mean-token-mean", "token-mean"])
def test_at_mu_1_the_policy_gradient_term_is_worth_0_or_a_length_term_yet_has_a_gradient(lora_tiny, mode):
    """Part 06's lesson: at μ = 1 Tunix has no old log-probs and uses the current ones, so every
    ratio is 1, the clip never acts, and the PG term's value is −(aggregated advantage): 0 under
    sequence-mean-token-mean (advantages sum to 0 in each group), −Σ AᵢLᵢ / Σ Lᵢ under
    token-mean. With β = 0 that is the whole logged loss; its gradient is not 0."""
    model, vocab = lora_tiny
    example = _example(vocab, np.random.default_rng(5), with_reference=False)
    advantages = np.array([0.7, -0.7, 1.3, -1.3], np.float32)  # centred within groups of G = 2
    example = example.replace(advantages=jnp.asarray(advantages), old_per_token_logps=None)
    algo = GRPOConfig(num_generations=2, num_iterations=1, beta=0.0, epsilon=0.2, loss_agg_mode=mode)
    algo.temperature = 0.7

    def f(m):
        return algo_core.grpo_loss_fn(m, example, algo, pad_id=0, eos_id=1)

    (loss, aux), grads = nnx.value_and_grad(f, argnums=nnx.DiffState(0, nnx.LoRAParam), has_aux=True)(model)
    lengths = np.asarray(example.completion_mask).sum(-1)
    assert len(set(lengths.tolist())) > 1  # replies of different lengths
    expected = 0.0 if mode == "sequence-mean-token-mean" else -float((advantages * lengths).sum() / lengths.sum())
    assert float(loss) == pytest.approx(expected, abs=1e-6) and (expected != 0.0) == (mode == "token-mean")
    assert float(aux["pg_clipfrac"]) == 0.0
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 1e-6


def test_no_reference_model_when_beta_is_zero(tiny_loaded):
    from course_utils import training

    def reference(config: TrainingConfig):  # part 06's reference cell
        return training.run_cells(["reference"], config=config, loaded=tiny_loaded, actor=None, mesh=None)["reference"]

    assert reference(TrainingConfig.for_profile("smoke", beta=0.0)) is None
    assert reference(TrainingConfig.for_profile("smoke", grpo_reference="base")) is tiny_loaded.model
