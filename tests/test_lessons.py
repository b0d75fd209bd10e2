"""The numbers and formulas the notebooks teach, checked against the code they describe
(Tunix 0.1.7's loss and advantages, the course's config and rewards)."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tunix.rl import algo_core, common
from tunix.rl.grpo.grpo_learner import GRPOConfig

from course_utils.config import TrainingConfig

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


# --- part 02: the clip, the aggregation, the std -------------------------------------------
class TableLM(nnx.Module):
    """Part 02's stand-in policy: one learnable row of logits per position."""

    def __init__(self, logits):
        self.logits = nnx.Param(jnp.asarray(logits, jnp.float32))

    def __call__(self, tokens, positions=None, cache=None, attention_mask=None):
        return jnp.broadcast_to(self.logits[...], (tokens.shape[0], *self.logits.shape)), None


PROMPT, REPLY, ADV = jnp.array([[2], [2]]), jnp.array([[3, 4, 5], [5, 3, 4]]), jnp.array([1.0, -1.0])


def _tunix_loss(model, old_logp, epsilon):
    example = common.TrainExample(prompt_ids=PROMPT, prompt_mask=PROMPT != 0, completion_ids=REPLY,
                                  completion_mask=jnp.ones_like(REPLY), advantages=ADV,
                                  ref_per_token_logps=None, old_per_token_logps=old_logp)
    algo = GRPOConfig(num_generations=2, beta=0.0, epsilon=epsilon)
    algo.temperature = 1.0
    return algo_core.grpo_loss_fn(model, example, algo, pad_id=0, eos_id=1)


def _logp(model):
    return jnp.take_along_axis(jax.nn.log_softmax(model.logits[...][:3]), REPLY.T, axis=1).T


def _clipped(logp, old, eps):
    ratio = jnp.exp(logp - old)
    per_token = jnp.maximum(-ADV[:, None] * ratio, -ADV[:, None] * jnp.clip(ratio, 1 - eps, 1 + eps))
    return per_token.mean(axis=1).mean()


def test_at_mu_1_tunix_ratio_is_one_and_epsilon_changes_nothing():
    model = TableLM(np.random.default_rng(0).normal(size=(4, 6)))
    grads = []
    for eps in (0.001, 0.2, 0.9):
        (loss, aux), grad = nnx.value_and_grad(lambda m: _tunix_loss(m, None, eps), has_aux=True)(model)
        assert float(aux["pg_clipfrac"]) == 0.0 and float(aux["is_ratio/max"]) == 1.0 == float(aux["is_ratio/min"])
        assert abs(float(loss)) < 1e-6  # −mean(A) under the default aggregation
        grads.append(np.asarray(grad["logits"][...]))
    assert np.abs(grads[0]).max() > 1e-3  # a real gradient, identical whatever ε
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-7)
    np.testing.assert_allclose(grads[0], grads[2], atol=1e-7)
    # ... and it is the plain policy gradient of −A·log π (mean per reply, then over replies)
    reinforce = nnx.grad(lambda m: -(ADV[:, None] * _logp(m)).mean(axis=1).mean())(model)
    np.testing.assert_allclose(grads[0], np.asarray(reinforce["logits"][...]), atol=1e-6)


def test_above_mu_1_tunix_loss_is_the_clipped_objective_and_clipped_tokens_get_no_gradient():
    model = TableLM(np.random.default_rng(0).normal(size=(4, 6)))
    now = _logp(model)
    old = now + jnp.array([[-0.5, 0.1, 0.0], [0.5, -0.1, 0.0]])
    loss, aux = _tunix_loss(model, old, 0.2)
    assert float(loss) == pytest.approx(float(_clipped(now, old, 0.2)), abs=1e-6)
    assert float(aux["pg_clipfrac"]) == pytest.approx(2 / 6)
    grad = np.asarray(jax.grad(_clipped)(now, old, 0.2))
    clipped = np.array([[True, False, False], [True, False, False]])  # ratio e^0.5 with A>0, e^-0.5 with A<0
    assert (grad[clipped] == 0).all() and (grad[~clipped] != 0).all()
    # a token that moved against its advantage (ratio 0.90 at A = +1) keeps its full gradient
    assert grad[0, 1] == pytest.approx(-float(jnp.exp(now - old)[0, 1]) / 6, rel=1e-5)


def test_aggregation_weights_per_token_as_part_02_teaches():
    mask = jnp.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    expected = {"sequence-mean-token-mean": (1 / 4, 1 / 12), "token-mean": (1 / 8, 1 / 8),
                "sequence-mean-token-scale": (1 / 12, 1 / 12)}
    for mode, (short, long) in expected.items():
        weight = jax.grad(lambda t: common.aggregate_loss(t, mask, mode))(jnp.zeros(mask.shape))
        assert float(weight[0, 0]) == pytest.approx(short) and float(weight[1, 0]) == pytest.approx(long)
    at_ratio_1 = -jnp.array([[1.0], [-1.0]]) * mask
    assert float(common.aggregate_loss(at_ratio_1, mask, "sequence-mean-token-mean")) == 0.0
    assert float(common.aggregate_loss(at_ratio_1, mask, "token-mean")) == pytest.approx(0.5)


def test_group_std_inflates_small_differences_and_drgrpo_does_not():
    close, mixed = np.array([0.80, 0.81, 0.82, 0.83]), np.array([0.2, 0.2, 0.9, 0.9])
    a_close, a_mixed = algo_core.compute_advantages(close, 4), algo_core.compute_advantages(mixed, 4)
    assert np.abs(a_close).max() == pytest.approx(1.16, abs=0.01)  # all right: tiny differences, full-size push
    assert np.abs(a_mixed).max() == pytest.approx(0.87, abs=0.01)  # half right: a smaller push than that
    d_close = np.asarray(algo_core.compute_drgrpo_advantages(close, 4))
    d_mixed = np.asarray(algo_core.compute_drgrpo_advantages(mixed, 4))
    assert np.abs(d_close).max() == pytest.approx(0.015) and np.abs(d_mixed).max() == pytest.approx(0.35)


def test_learning_rate_ratios_part_02_prints():
    tpu = TrainingConfig.for_profile("tpu")
    assert tpu.sft_learning_rate / tpu.learning_rate == pytest.approx(6.67, abs=0.01)
    assert tpu.learning_rate / 3e-6 == pytest.approx(10)
    text = (NOTEBOOKS / "02_grpo_config.py").read_text()
    assert "3,364 (3,738 batches × 0.9)" in text and int(3738 * 0.9) == 3364  # Tunix notebook's MAX_STEPS
    assert TrainingConfig().num_iterations == 1 and all(TrainingConfig.for_profile(p).num_iterations == 1
                                                        for p in ("smoke", "cpu", "tpu"))
