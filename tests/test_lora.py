"""course_utils.lora: qwix LoRA on Gemma 3 starts as the base model and trains only itself (part 04)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from course_utils.config import TrainingConfig
from course_utils.env import make_mesh
from course_utils.generate import compiled_forward, forward_logits
from course_utils.model import count_parameters
from course_utils.lora import LORA_TARGETS, apply_lora, frozen_filter, lora_state, parameter_counts
from course_utils.memory import lora_parameter_count

TOKENS = jnp.array([[0, 0, 2, 818, 5279, 529, 7001, 563], [2, 9259, 1902, 236761, 669, 9405, 563, 15687]])


@pytest.fixture(scope="module")
def cpu_lora(cpu_loaded):
    return apply_lora(cpu_loaded.model, TrainingConfig.for_profile("cpu"))


def test_lora_at_initialisation_computes_the_base_model(cpu_loaded, cpu_lora):
    base = compiled_forward(cpu_loaded.model)(TOKENS)
    lora = compiled_forward(cpu_lora)(TOKENS)
    np.testing.assert_allclose(np.asarray(lora), np.asarray(base), rtol=0, atol=1e-4)
    assert (jnp.argmax(lora, -1) == jnp.argmax(base, -1)).all()


def test_lora_sits_on_every_target_and_shares_the_base_weights(cpu_loaded, cpu_lora):
    config = TrainingConfig.for_profile("cpu")
    counts = parameter_counts(cpu_loaded.model, cpu_lora)
    expected = lora_parameter_count(cpu_loaded.model_config, config.lora_rank)
    assert counts["lora_by_target"] == expected  # qwix made exactly the A, B pairs we expect
    assert counts["lora"] == sum(expected.values()) == 3_612_672
    assert counts["base"] == count_parameters(cpu_loaded.model) and 260e6 < counts["base"] < 275e6
    assert counts["total"] == counts["base"] + counts["lora"]
    assert 1.0 < counts["trainable_percent"] < 2.0
    assert counts["shares_base_weights"]  # GRPO's reference model costs no memory


def test_one_optimiser_step_changes_only_lora_weights(tiny_loaded):
    config = TrainingConfig.for_profile("smoke")
    lora = apply_lora(tiny_loaded.model, config)
    encode = tiny_loaded.tokenizer.encode
    tokens = jnp.array([[2, *encode("The capital of France is")][:6], [0, 2, *encode("Hello world, it is")][:6]])
    assert int(tokens.max()) < tiny_loaded.model_config.num_embed
    frozen_before = jax.tree.map(np.asarray, nnx.state(lora, frozen_filter()))
    lora_before = jax.tree.map(np.asarray, lora_state(lora))
    base_logits = np.asarray(forward_logits(tiny_loaded.model, tokens))

    def loss(model):
        logits = forward_logits(model, tokens)[:, :-1]
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1).mean()

    optimizer = nnx.Optimizer(lora, optax.adam(1e-2), wrt=nnx.LoRAParam)

    @nnx.jit
    def train_step(model, optimizer):
        value, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
        optimizer.update(model, grads)
        return value

    value = train_step(lora, optimizer)

    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(nnx.state(lora, frozen_filter()))):
        np.testing.assert_array_equal(a, np.asarray(b))
    changed = {jax.tree_util.keystr(p): not np.array_equal(a, np.asarray(b)) for (p, a), b in zip(
        jax.tree_util.tree_leaves_with_path(lora_before), jax.tree.leaves(lora_state(lora)))}
    # B starts at zero, so the first step moves every B (A's gradient is zero while B is zero).
    assert all(v for k, v in changed.items() if "lora_b" in k) and any(changed.values())
    assert loss(lora) < value  # the step helped
    np.testing.assert_array_equal(np.asarray(forward_logits(tiny_loaded.model, tokens)), base_logits)


def test_lora_rank_and_alpha_come_from_the_config(tiny_loaded):
    small = apply_lora(tiny_loaded.model, TrainingConfig.for_profile("smoke", lora_rank=2, lora_alpha=4.0))
    counts = parameter_counts(tiny_loaded.model, small)
    assert counts["lora_by_target"] == lora_parameter_count(tiny_loaded.model_config, 2)
    assert set(counts["lora_by_target"]) == set(LORA_TARGETS) and all(counts["lora_by_target"].values())


def test_lora_weights_live_on_the_mesh_and_cannot_be_stacked(tiny_loaded):
    mesh = make_mesh()
    lora = apply_lora(tiny_loaded.model, TrainingConfig.for_profile("smoke"), mesh=mesh)
    for leaf in jax.tree.leaves(lora_state(lora)):
        assert isinstance(leaf.sharding, jax.sharding.NamedSharding) and leaf.sharding.mesh == mesh
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(lora, TrainingConfig.for_profile("smoke"))
