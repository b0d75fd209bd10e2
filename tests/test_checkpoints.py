"""Tests of course_utils.checkpoints: exact round trips, keep-K, half-written checkpoints
(including a real kill -9 during a save), config fingerprints, placement on the target's sharding."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from course_utils.checkpoints import (
    CheckpointInfo,
    ConfigMismatchError,
    check_config,
    latest_checkpoint,
    list_checkpoints,
    restore_checkpoint,
    save_checkpoint,
)
from course_utils.config import TrainingConfig

REPO = Path(__file__).resolve().parent.parent


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


def _trained_states(rank: int = 2, seed: int = 0):
    """A LoRA nnx.State and an AdamW state after three real updates (non-zero moments, count 3)."""
    state = nnx.state(TinyLoRAModel(rank, seed), nnx.LoRAParam)
    tx = optax.adamw(1e-2)
    opt_state = tx.init(state)
    for i in range(3):
        grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1 * (i + 1)), state)
        updates, opt_state = tx.update(grads, opt_state, state)
        state = optax.apply_updates(state, updates)
    return state, opt_state


@pytest.fixture(scope="module")
def states():
    return _trained_states()


@pytest.fixture(scope="module")
def config():
    return TrainingConfig.for_profile("smoke")


def _assert_trees_equal(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def test_round_trip_is_exact_for_nnx_lora_state_and_adamw(tmp_path, states, config):
    params, opt_state = states
    path = save_checkpoint(tmp_path, 7, params, opt_state, {"stage": "grpo", "phase": "easy"}, config=config)
    assert path == tmp_path / "step_000007"
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "opt_state", "params"]

    info = latest_checkpoint(tmp_path)
    assert isinstance(info, CheckpointInfo) and info.step == 7 and info.path == path
    restored, restored_opt = restore_checkpoint(info, _zeros_like(params), _zeros_like(opt_state), config=config)
    assert isinstance(restored, nnx.State)
    _assert_trees_equal(restored, params)
    _assert_trees_equal(restored_opt, opt_state)
    assert int(restored_opt[0].count) == 3  # ScaleByAdamState.count after three updates
    assert any(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(restored))

    # The restored pair continues training exactly like the original.
    tx = optax.adamw(1e-2)
    grads = jax.tree.map(jnp.ones_like, params)
    u1, _ = tx.update(grads, opt_state, params)
    u2, _ = tx.update(grads, restored_opt, restored)
    _assert_trees_equal(u1, u2)

    # Params alone, and a path instead of a CheckpointInfo.
    only, none = restore_checkpoint(path, _zeros_like(params))
    assert none is None
    _assert_trees_equal(only, params)


def test_sidecar_records_step_stage_phase_fingerprint_metrics_versions(tmp_path, states, config):
    params, _ = states
    metrics = {"reward_mean": np.float32(0.25), "kl": jnp.asarray(0.5), "steps": np.arange(2)}
    save_checkpoint(tmp_path, 3, params, sidecar={"stage": "sft", "phase": "medium", "metrics": metrics,
                                                   "metrics_file": tmp_path / "metrics_sft.jsonl"}, config=config)
    meta = json.loads((tmp_path / "step_000003" / "meta.json").read_text())
    assert meta["step"] == 3 and meta["stage"] == "sft" and meta["phase"] == "medium"
    assert meta["config_fingerprint"] == config.fingerprint()
    assert meta["config"]["lora_rank"] == config.lora_rank
    assert meta["metrics"] == {"reward_mean": 0.25, "kl": 0.5, "steps": [0, 1]}
    assert meta["metrics_file"].endswith("metrics_sft.jsonl")
    assert meta["versions"]["orbax-checkpoint"] and meta["versions"]["jax"] == jax.__version__
    assert meta["items"] == {"params": True, "opt_state": False}
    assert abs(meta["saved_unix"] - time.time()) < 120
    info = latest_checkpoint(tmp_path)
    assert (info.stage, info.phase, info.fingerprint, info.has_opt_state) == ("sft", "medium", config.fingerprint(), False)
    assert latest_checkpoint(tmp_path, stage="grpo") is None
    assert latest_checkpoint(tmp_path / "missing") is None


def test_keep_last_k_prunes_oldest_and_never_the_new_one(tmp_path, states, config):
    params, opt_state = states
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, params, opt_state, {"stage": "grpo"}, keep=2)
    assert [c.step for c in list_checkpoints(tmp_path)] == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000004", "step_000005"]  # no scratch left

    # config.keep_checkpoints (3 for smoke) is the default when a config is given.
    for step in range(6, 10):
        save_checkpoint(tmp_path, step, params, config=config)
    assert [c.step for c in list_checkpoints(tmp_path)] == [7, 8, 9]

    # An older step saved next to newer ones is kept (and warned about), not pruned at once.
    with pytest.warns(UserWarning, match="later checkpoints"):
        save_checkpoint(tmp_path, 2, params, config=config)
    assert 2 in [c.step for c in list_checkpoints(tmp_path)]
    assert latest_checkpoint(tmp_path).step == 9


def test_resaving_a_step_replaces_it(tmp_path, states):
    params, _ = states
    save_checkpoint(tmp_path, 4, params, sidecar={"phase": "easy"})
    doubled = jax.tree.map(lambda x: x * 2, params)
    save_checkpoint(tmp_path, 4, doubled, sidecar={"phase": "hard"})
    info = latest_checkpoint(tmp_path)
    assert info.phase == "hard"
    restored, _ = restore_checkpoint(info, params)
    _assert_trees_equal(restored, doubled)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000004"]


def test_half_written_checkpoints_are_skipped(tmp_path, states):
    params, opt_state = states
    save_checkpoint(tmp_path, 1, params, opt_state)
    save_checkpoint(tmp_path, 2, params, opt_state)

    # Arrays but no sidecar (a save killed before meta.json), as a finished-looking folder.
    shutil.copytree(tmp_path / "step_000002", tmp_path / "step_000003")
    (tmp_path / "step_000003" / "meta.json").unlink()
    # A sidecar cut in half.
    shutil.copytree(tmp_path / "step_000002", tmp_path / "step_000004")
    text = (tmp_path / "step_000004" / "meta.json").read_text()
    (tmp_path / "step_000004" / "meta.json").write_text(text[: len(text) // 2])
    # A sidecar of another step (a folder copied by hand).
    shutil.copytree(tmp_path / "step_000002", tmp_path / "step_000005")
    # A sidecar whose arrays are gone.
    shutil.copytree(tmp_path / "step_000002", tmp_path / "step_000006")
    shutil.rmtree(tmp_path / "step_000006" / "opt_state")
    meta = json.loads((tmp_path / "step_000006" / "meta.json").read_text())
    (tmp_path / "step_000006" / "meta.json").write_text(json.dumps({**meta, "step": 6}))
    # An empty folder and a stray file.
    (tmp_path / "step_000007").mkdir()
    (tmp_path / "step_000008").write_text("not a folder")

    assert [c.step for c in list_checkpoints(tmp_path)] == [1, 2]
    assert latest_checkpoint(tmp_path).step == 2
    with pytest.raises(FileNotFoundError, match="latest_checkpoint"):
        restore_checkpoint(tmp_path / "step_000003", params)


_KILL_SCRIPT = """
import os, sys, time
import numpy as np
import jax.numpy as jnp
from course_utils import checkpoints as ck

directory, mode = sys.argv[1], sys.argv[2]
small = {"w": jnp.arange(16, dtype=jnp.float32)}
ck.save_checkpoint(directory, 1, small, sidecar={"stage": "grpo"})
# ~384 MB of incompressible data: params plus an "optimiser state" twice its size.
rng = np.random.default_rng(0)
big = {f"w{i}": jnp.asarray(rng.integers(0, 2**32, size=(4, 1024, 1024), dtype=np.uint32)) for i in range(8)}
opt = {"mu": big, "nu": {k: v + 1 for k, v in big.items()}}
if mode == "before_sidecar":
    original = ck._write_sidecar
    def slow_sidecar(path, meta):
        print("ARRAYS_WRITTEN", flush=True)
        time.sleep(120)
        original(path, meta)
    ck._write_sidecar = slow_sidecar
print("SAVING", flush=True)
ck.save_checkpoint(directory, 2, big, opt, sidecar={"stage": "grpo"})
print("SAVED", flush=True)
"""


def _start_saver(tmp_path: Path, mode: str) -> subprocess.Popen:
    script = tmp_path / "saver.py"
    script.write_text(textwrap.dedent(_KILL_SCRIPT))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "ckpt"), mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )


def _wait_for_line(proc: subprocess.Popen, wanted: str) -> None:
    for line in proc.stdout:
        if line.strip() == wanted:
            return
    proc.wait(timeout=30)
    pytest.fail(f"saver exited ({proc.returncode}) before printing {wanted}: {proc.stderr.read()[-2000:]}")


@pytest.mark.parametrize("mode", ["during_arrays", "before_sidecar"])
def test_kill_9_during_save_falls_back_to_previous_checkpoint(tmp_path, mode):
    """A real SIGKILL while step 2 is being written: step 1 stays the latest valid checkpoint,
    restores exactly, and the next save clears the debris."""
    directory = tmp_path / "ckpt"
    proc = _start_saver(tmp_path, mode)
    try:
        if mode == "before_sidecar":
            _wait_for_line(proc, "ARRAYS_WRITTEN")
        else:
            _wait_for_line(proc, "SAVING")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # kill as soon as Orbax has started writing
                partial = list(directory.glob(".step_000002.partial-*/*"))
                if partial:
                    break
                time.sleep(0.002)
            else:
                pytest.fail("the saver never started writing step 2")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert "SAVED" not in proc.stdout.read()
    assert not (directory / "step_000002").exists(), "the save finished before the kill"
    assert list(directory.glob(".step_000002.partial-*")), "expected the killed save's debris"

    info = latest_checkpoint(directory)
    assert info is not None and info.step == 1
    restored, _ = restore_checkpoint(info, {"w": jnp.zeros(16, jnp.float32)})
    np.testing.assert_array_equal(restored["w"], np.arange(16, dtype=np.float32))

    save_checkpoint(directory, 2, {"w": jnp.ones(16)})
    assert [c.step for c in list_checkpoints(directory)] == [1, 2]
    assert not list(directory.glob(".step_*")), "stale partial folder of a dead process not removed"


def test_config_fingerprint_mismatch_is_a_clear_error(tmp_path, states, config):
    params, opt_state = states
    save_checkpoint(tmp_path, 5, params, opt_state, {"stage": "grpo"}, config=config)
    info = latest_checkpoint(tmp_path)
    changed = TrainingConfig.for_profile("smoke", lora_rank=4, max_steps=9)
    with pytest.raises(ConfigMismatchError) as err:
        restore_checkpoint(info, params, opt_state, config=changed)
    message = str(err.value)
    assert "lora_rank: 8 → 4" in message and "max_steps: 4 → 9" in message
    assert "allow_config_change=True" in message and "COURSE_RUN_DIR" in message
    assert isinstance(err.value, ValueError)

    with pytest.warns(UserWarning, match="different configuration"):
        restored, _ = restore_checkpoint(info, _zeros_like(params), config=changed, allow_config_change=True)
    _assert_trees_equal(restored, params)
    assert check_config(info, config) == []
    with pytest.warns(UserWarning):
        assert len(check_config(info, changed, allow_config_change=True)) == 2


def test_target_that_does_not_fit_is_a_clear_error(tmp_path, states):
    params, opt_state = states
    save_checkpoint(tmp_path, 1, params)
    info = latest_checkpoint(tmp_path)
    other_rank, _ = _trained_states(rank=4)
    with pytest.raises(ValueError, match="do not fit the target") as err:
        restore_checkpoint(info, other_rank)
    assert "layers/0/lora_a/value: saved (8, 2), target (8, 4)" in str(err.value)
    with pytest.raises(ValueError, match="w: only in the target"):
        restore_checkpoint(info, {"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match="holds no optimiser state"):
        restore_checkpoint(info, params, opt_state)


def test_bad_inputs_fail_before_anything_is_written(tmp_path, states):
    params, _ = states
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_checkpoint(tmp_path, 1, params, sidecar={"bad": object()})
    with pytest.raises(ValueError, match="integer >= 0"):
        save_checkpoint(tmp_path, -1, params)
    with pytest.raises(ValueError, match="differs from step"):
        save_checkpoint(tmp_path, 1, params, sidecar={"step": 2})
    with pytest.raises(ValueError, match="written by save_checkpoint"):
        save_checkpoint(tmp_path, 1, params, sidecar={"versions": {}})
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, 1, params, keep=0)
    with pytest.raises(ValueError, match=r"nnx.state\(model, nnx.LoRAParam\)"):
        save_checkpoint(tmp_path, 1, TinyLoRAModel())
    with pytest.raises(ValueError, match="params is None"):
        save_checkpoint(tmp_path, 1, None)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    save_checkpoint(tmp_path, np.int64(1), params)  # numpy step counters are fine
    assert latest_checkpoint(tmp_path).step == 1


def test_restored_leaves_take_the_target_sharding(tmp_path):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tp"))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "tp"))
    params = {"a": jnp.arange(32, dtype=jnp.float32).reshape(4, 8)}
    save_checkpoint(tmp_path, 1, params)
    target = {"a": jax.device_put(jnp.zeros((4, 8), jnp.float32), sharding)}
    restored, _ = restore_checkpoint(latest_checkpoint(tmp_path), target)
    assert restored["a"].sharding == sharding
    abstract = {"a": jax.ShapeDtypeStruct((4, 8), jnp.float32, sharding=sharding)}
    restored, _ = restore_checkpoint(latest_checkpoint(tmp_path), abstract)
    assert restored["a"].sharding == sharding
    np.testing.assert_array_equal(restored["a"], params["a"])


_SHARDING_SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from course_utils.checkpoints import latest_checkpoint, restore_checkpoint, save_checkpoint

assert len(jax.devices()) == 2, jax.devices()
mesh = Mesh(np.array(jax.devices()).reshape(1, 2), ("fsdp", "tp"))
values = jnp.arange(64, dtype=jnp.float32).reshape(8, 8)
# Saved from one device, restored sharded over the 'tp' axis, and the other way round.
save_checkpoint(sys.argv[1] + "/a", 1, {"lora_b": values})
tp = NamedSharding(mesh, P(None, "tp"))
out, _ = restore_checkpoint(latest_checkpoint(sys.argv[1] + "/a"), {"lora_b": jax.device_put(jnp.zeros((8, 8)), tp)})
assert out["lora_b"].sharding == tp and len(out["lora_b"].addressable_shards) == 2
np.testing.assert_array_equal(out["lora_b"], values)
save_checkpoint(sys.argv[1] + "/b", 1, {"lora_b": jax.device_put(values, tp)})
one = jax.sharding.SingleDeviceSharding(jax.devices()[1])
out, _ = restore_checkpoint(latest_checkpoint(sys.argv[1] + "/b"), {"lora_b": jax.device_put(jnp.zeros((8, 8)), one)})
assert out["lora_b"].sharding == one
np.testing.assert_array_equal(out["lora_b"], values)
print("SHARDING_OK")
"""


def test_restore_reshards_across_two_devices(tmp_path):
    """In a fresh process with two CPU devices: single-device save → sharded restore and back."""
    script = tmp_path / "shard.py"
    script.write_text(textwrap.dedent(_SHARDING_SCRIPT))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SHARDING_OK" in result.stdout


def test_round_trip_of_an_nnx_optimizer_as_tunix_trainers_hold_it(tmp_path):
    """Tunix's PeftTrainer keeps `nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`; its state and the
    LoRA state go through a checkpoint and back into a fresh model/optimiser with nnx.update."""
    def build():
        model = TinyLoRAModel(seed=0)
        return model, nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.LoRAParam)

    def loss(model):
        return sum(jnp.sum((layer.lora_a[...].astype(jnp.float32) @ layer.lora_b[...]) ** 2)
                   for layer in model.layers)

    model, optimizer = build()
    for _ in range(2):
        grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
        optimizer.update(model, grads)
    lora = nnx.state(model, nnx.LoRAParam)
    opt = nnx.state(optimizer, nnx.optimizer.OptState)
    save_checkpoint(tmp_path, 2, lora, opt, {"stage": "sft"})

    fresh_model, fresh_optimizer = build()
    params, opt_state = restore_checkpoint(latest_checkpoint(tmp_path), nnx.state(fresh_model, nnx.LoRAParam),
                                           nnx.state(fresh_optimizer, nnx.optimizer.OptState))
    nnx.update(fresh_model, params)
    nnx.update(fresh_optimizer, opt_state)
    _assert_trees_equal(nnx.state(fresh_model, nnx.LoRAParam), lora)
    _assert_trees_equal(nnx.state(fresh_optimizer, nnx.optimizer.OptState), opt)
    assert int(fresh_optimizer.step[...]) == 2
