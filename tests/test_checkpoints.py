"""course_utils.checkpoints on what production writes: Tunix's CheckpointManager (the one its
trainers use) saving a LoRA model, its optimiser and the course's sidecar as custom metadata.
The resume after a real kill of training is tests/test_training.py's."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from tunix.sft.checkpoint_manager import CheckpointManager

from course_utils.checkpoints import CheckpointInfo, latest_checkpoint, restore_lora


class LoRALinear(nnx.Module):
    """A linear layer with a frozen base weight and LoRA factors of two dtypes."""

    def __init__(self, din: int, dout: int, rank: int, rngs: nnx.Rngs) -> None:
        self.w = nnx.Param(jax.random.normal(rngs.params(), (din, dout)))
        self.lora_a = nnx.LoRAParam(jax.random.normal(rngs.params(), (din, rank)).astype(jnp.bfloat16))
        self.lora_b = nnx.LoRAParam(jax.random.normal(rngs.params(), (rank, dout)))


class TinyLoRAModel(nnx.Module):
    def __init__(self, rank: int = 2, seed: int = 0) -> None:
        rngs = nnx.Rngs(seed)
        self.layers = nnx.List([LoRALinear(8, 8, rank, rngs) for _ in range(2)])


def _lora(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam))]


def _save_steps(directory, steps=(1, 2, 3)) -> dict[int, list[np.ndarray]]:
    """Save a LoRA model after each of `steps` (its LoRA weights moved each time) as Tunix's
    trainers do; returns each step's LoRA weights."""
    model = TinyLoRAModel()
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.LoRAParam)
    manager = CheckpointManager(str(directory), ocp.CheckpointManagerOptions(save_interval_steps=1, max_to_keep=2))
    saved = {}
    for step in steps:
        nnx.update(model, jax.tree.map(lambda x: x + step, nnx.state(model, nnx.LoRAParam)))
        sidecar = {"stage": "grpo", "phase": "easy" if step < 3 else "hard", "config_fingerprint": "abc"}
        manager.save(step, model, optimizer, save_only_lora_params=True,
                     custom_metadata={"global_step": step, "course": sidecar})
        saved[step] = _lora(model)
    manager.close()
    return saved


def test_latest_checkpoint_reads_the_step_and_sidecar_orbax_wrote(tmp_path):
    _save_steps(tmp_path)
    info = latest_checkpoint(tmp_path)
    assert isinstance(info, CheckpointInfo) and info.step == 3 and info.path == tmp_path / "3"
    assert (info.stage, info.sidecar["phase"], info.fingerprint) == ("grpo", "hard", "abc")
    assert str(info) == f"checkpoint step 3 at {tmp_path / '3'} (stage grpo, phase hard)"
    assert info.sidecar["global_step"] == 3 and info.params_path.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "3"]  # max_to_keep=2 pruned step 1
    assert latest_checkpoint(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert latest_checkpoint(tmp_path / "empty") is None


def test_a_save_killed_midway_is_never_the_latest(tmp_path):
    """Orbax writes into `<step>.orbax-checkpoint-tmp-<n>` and renames it when complete: a kill
    leaves that folder behind (here: a copy of a complete step under that name)."""
    _save_steps(tmp_path)
    shutil.copytree(tmp_path / "3", tmp_path / "4.orbax-checkpoint-tmp-1234")
    assert latest_checkpoint(tmp_path).step == 3


def test_restore_lora_loads_the_newest_or_a_chosen_step_exactly(tmp_path):
    saved = _save_steps(tmp_path)
    model = TinyLoRAModel()
    base = np.asarray(model.layers[0].w[...])
    assert restore_lora(model, tmp_path) == 3
    for got, want in zip(_lora(model), saved[3]):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(model.layers[0].w[...]), base)  # only LoRA restored
    assert restore_lora(model, tmp_path, step=2) == 2
    for got, want in zip(_lora(model), saved[2]):
        np.testing.assert_array_equal(got, want)


def test_a_checkpoint_of_another_rank_is_a_clear_error(tmp_path):
    _save_steps(tmp_path)
    with pytest.raises(ValueError, match="lora_rank"):
        restore_lora(TinyLoRAModel(rank=4), tmp_path)
