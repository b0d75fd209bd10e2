"""Orbax checkpoints that survive a killed session, with a JSON sidecar (part 06).

Kaggle sessions end after 9 hours, often in the middle of something. Every checkpoint of the
course is one folder per step::

    <directory>/step_000050/
        params/      Orbax checkpoint of the LoRA parameters (any JAX pytree, e.g. an nnx.State)
        opt_state/   Orbax checkpoint of the optimiser state (only when one was given)
        meta.json    the sidecar: step, stage, curriculum phase, config fingerprint, metrics ...

A checkpoint is *valid* only when its `meta.json` exists, parses, and names its own step.
`save_checkpoint` writes everything into a hidden `.step_000050.partial-<pid>` folder, writes
the sidecar last (temp file + rename), and only then renames the folder to `step_000050`. A
process killed at any moment therefore leaves either a finished checkpoint or a hidden partial
folder that `latest_checkpoint` never looks at (and the next save clears away). Old checkpoints
are renamed away before they are deleted, so a kill while pruning cannot leave a folder with a
sidecar but missing arrays either.

>>> info = latest_checkpoint(run_dir / "checkpoints" / "grpo")     # doctest: +SKIP
>>> if info is not None:                                             # doctest: +SKIP
...     params, opt_state = restore_checkpoint(info, lora_state, opt_state, config=config)

Training itself (part 06) checkpoints through Tunix's trainers, whose Orbax CheckpointManager
restores the newest checkpoint and skips the batches already trained when a stage restarts.
Those folders are named by bare step number (`<directory>/50/model_params`, `optimizer_state`)
and carry the course's sidecar inside Orbax's own `_CHECKPOINT_METADATA` (custom metadata,
written atomically with the arrays). `latest_checkpoint`, `read_checkpoint_info` and
`restore_checkpoint` read both layouts, so evaluation and export find either. Local (or
mounted) filesystems only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from course_utils.files import atomic_write

if TYPE_CHECKING:
    from course_utils.config import TrainingConfig

SIDECAR = "meta.json"
FORMAT = "course-checkpoint-v1"
PARAMS_ITEM = "params"
OPT_STATE_ITEM = "opt_state"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")
_SCRATCH_DIR = re.compile(r"^\.step_\d{6,}\.(partial|deleting)-(\d+)-[0-9a-f]+$")
# Keys save_checkpoint writes itself; a caller's sidecar may not set them (except as noted).
_RESERVED = ("format", "step", "saved_at", "saved_unix", "versions", "items")
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "google-tunix", "qwix", "course-utils")


class ConfigMismatchError(ValueError):
    """A checkpoint was saved under a different `TrainingConfig` than the current one."""


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """One valid checkpoint on disk: its folder, its step and its parsed `meta.json` (part 06)."""

    path: Path
    step: int
    sidecar: dict[str, Any]
    items: dict[str, str] = dataclasses.field(
        default_factory=lambda: {PARAMS_ITEM: PARAMS_ITEM, OPT_STATE_ITEM: OPT_STATE_ITEM})

    @property
    def stage(self) -> str | None:
        """The training stage that wrote it ("sft", "grpo", ...), if recorded."""
        return self.sidecar.get("stage")

    @property
    def phase(self) -> str | None:
        """The curriculum phase at save time ("easy", "medium", "hard"), if recorded."""
        return self.sidecar.get("phase")

    @property
    def fingerprint(self) -> str | None:
        """`TrainingConfig.fingerprint()` of the run that saved it, if recorded."""
        return self.sidecar.get("config_fingerprint")

    @property
    def has_opt_state(self) -> bool:
        if self.items.get(OPT_STATE_ITEM) != OPT_STATE_ITEM:  # Tunix layout: the folder tells
            return (self.path / self.items[OPT_STATE_ITEM]).is_dir()
        return bool(self.sidecar.get("items", {}).get(OPT_STATE_ITEM))

    def __str__(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in (("stage", self.stage), ("phase", self.phase)) if v)
        return f"checkpoint step {self.step} at {self.path}" + (f" ({extra})" if extra else "")


# --- saving ----------------------------------------------------------------------------------


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    params: Any,
    opt_state: Any = None,
    sidecar: Mapping[str, Any] | None = None,
    *,
    config: TrainingConfig | None = None,
    keep: int | None = None,
) -> Path:
    """Save `params` (and `opt_state`) as `directory/step_{step:06d}/`, sidecar last (part 06).

    `params` and `opt_state` are any JAX pytrees: `nnx.state(model, nnx.LoRAParam)`, a dict of
    arrays, an optax state, `nnx.state(optimizer, nnx.optimizer.OptState)`. `sidecar` holds what
    the trainer wants to find again — by convention `stage` ("sft" | "grpo"), `phase` (curriculum
    phase), `metrics` (the last metrics row), `metrics_file` (the JSONL with the history) and
    whatever resuming needs, such as the data position; it must be JSON-serialisable
    (numpy/JAX scalars and Paths are converted). `config`, a `TrainingConfig`, adds its
    fingerprint and settings to the sidecar and supplies `keep` (`config.keep_checkpoints`);
    `keep=None` without a config keeps every checkpoint. The newest `keep` checkpoints by step
    survive, and always the one just written. Returns the checkpoint folder.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory)
    step = _check_step(step)
    meta = _build_sidecar(step, sidecar, config, has_opt_state=opt_state is not None)
    if keep is None and config is not None:
        keep = config.keep_checkpoints
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep={keep!r} is not allowed: keep must be an integer >= 1 or None (keep all).")
    _check_tree("params", params, "nnx.state(model, nnx.LoRAParam)")
    if opt_state is not None:
        _check_tree("opt_state", opt_state, "nnx.state(optimizer, nnx.optimizer.OptState)")

    directory.mkdir(parents=True, exist_ok=True)
    _clear_scratch(directory)
    final = directory / f"step_{step:06d}"
    newer = [c.step for c in list_checkpoints(directory) if c.step > step]
    if newer:
        warnings.warn(
            f"saving step {step} into {directory}, which already holds later checkpoints "
            f"(steps {newer}); latest_checkpoint() will still return step {max(newer)}. Delete "
            "those folders if they belong to an abandoned run.",
            stacklevel=2,
        )
    scratch = directory / f".step_{step:06d}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    try:
        checkpointer = ocp.StandardCheckpointer()
        try:
            checkpointer.save(scratch / PARAMS_ITEM, params)
            checkpointer.wait_until_finished()
            if opt_state is not None:
                checkpointer.save(scratch / OPT_STATE_ITEM, opt_state)
                checkpointer.wait_until_finished()
        finally:
            checkpointer.close()
        _write_sidecar(scratch / SIDECAR, meta)
        _publish(scratch, final)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if keep is not None:
        prune_checkpoints(directory, keep, protect=step)
    return final


def prune_checkpoints(directory: str | os.PathLike, keep: int, protect: int | None = None) -> list[int]:
    """Delete all but the newest `keep` valid checkpoints (never step `protect`); returns the
    deleted steps. Folders without a valid sidecar are left alone (part 06)."""
    directory = Path(directory)
    valid = list_checkpoints(directory)
    survivors = {c.step for c in valid[-keep:]} | ({protect} if protect is not None else set())
    deleted = []
    for info in valid:
        if info.step not in survivors:
            _remove_tree(info.path)
            deleted.append(info.step)
    return deleted


def _check_tree(name: str, tree: Any, hint: str) -> None:
    """Reject what Orbax would choke on obscurely: None, or a live nnx Module/Optimizer."""
    if tree is None:
        raise ValueError(f"{name} is None; pass the pytree to save, e.g. {hint}.")
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a course requirement
        return
    if isinstance(tree, nnx.Pytree):
        raise ValueError(
            f"{name} is a live {type(tree).__name__}, not a pytree of arrays; pass {hint} instead."
        )


def _check_step(step: Any) -> int:
    if hasattr(step, "item") and not isinstance(step, bool):  # numpy / JAX integer scalar
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step={step!r} is not allowed: the step must be an integer >= 0.")
    return step


def _build_sidecar(step: int, extra: Mapping[str, Any] | None, config: Any, has_opt_state: bool) -> dict:
    extra = dict(extra or {})
    if not all(isinstance(k, str) for k in extra):
        raise ValueError("sidecar keys must be strings (they become JSON object keys).")
    if "step" in extra and _check_step(extra["step"]) != step:
        raise ValueError(f"sidecar step={extra['step']!r} differs from step={step}; drop it from the sidecar.")
    clash = sorted(k for k in _RESERVED if k in extra and k != "step")
    if clash:
        raise ValueError(f"sidecar keys {clash} are written by save_checkpoint itself; rename them.")
    meta: dict[str, Any] = {"format": FORMAT, "step": step}
    if config is not None:
        meta["config_fingerprint"] = config.fingerprint()
        meta["config"] = config.to_dict()
        meta.setdefault("profile", getattr(config, "profile", None))
    for key, value in extra.items():
        if key == "step":
            continue
        if key == "config_fingerprint" and "config_fingerprint" in meta and value != meta[key]:
            raise ValueError(
                f"sidecar config_fingerprint={value!r} differs from config.fingerprint()="
                f"{meta[key]!r}; pass one or the other."
            )
        meta[key] = value
    now = time.time()
    meta["saved_unix"] = round(now, 3)
    meta["saved_at"] = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")
    meta["versions"] = _versions()
    meta["items"] = {PARAMS_ITEM: True, OPT_STATE_ITEM: has_opt_state}
    try:  # fail before any array is written, naming the bad key
        json.dumps(meta, default=_json_default, allow_nan=True)
    except TypeError as err:
        raise ValueError(
            f"the checkpoint sidecar must be JSON-serialisable: {err}. Convert the value to a "
            "number, string, list or dict before passing it."
        ) from None
    return meta


def _json_default(value: Any) -> Any:
    """numpy / JAX scalars and 1-element arrays → Python numbers; Paths → strings."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and hasattr(value, "shape"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON-serialisable")


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for dist in _VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _write_sidecar(path: Path, meta: dict) -> None:
    """Write `meta.json` atomically: temp file, flush, fsync, rename."""
    atomic_write(path, json.dumps(meta, indent=2, default=_json_default, allow_nan=True) + "\n")
    _fsync_dir(path.parent)


def _publish(scratch: Path, final: Path) -> None:
    """Rename the finished scratch folder to its final name (replacing an older save of the
    same step, which is moved away first and deleted after)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.deleting-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(scratch, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_tree(path: Path) -> None:
    """Delete a checkpoint folder so that a kill midway never leaves a 'valid' half folder."""
    doomed = path.with_name(f".{path.name}.deleting-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _clear_scratch(directory: Path) -> None:
    """Remove partial/deleting folders left by processes that no longer run (e.g. killed)."""
    for child in directory.iterdir():
        m = _SCRATCH_DIR.match(child.name)
        if m and child.is_dir() and not _pid_alive(int(m.group(2))):
            shutil.rmtree(child, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers (a save that raised) are safe to remove
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- finding ---------------------------------------------------------------------------------


def read_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo | None:
    """The `CheckpointInfo` of one `step_NNNNNN` folder, or None when it is not a valid,
    complete checkpoint (no/corrupt sidecar, sidecar of another step, missing arrays)."""
    path = Path(path)
    if path.name.isdigit():
        return _read_tunix_checkpoint(path)
    m = _STEP_DIR.match(path.name)
    if not m or not path.is_dir():
        return None
    try:
        meta = json.loads((path / SIDECAR).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("step") != int(m.group(1)):
        return None
    items = meta.get("items")
    if not isinstance(items, dict) or not items.get(PARAMS_ITEM):
        return None
    if any(flag and not (path / name).is_dir() for name, flag in items.items()):
        return None
    return CheckpointInfo(path=path, step=meta["step"], sidecar=meta)


TUNIX_METADATA = "_CHECKPOINT_METADATA"
TUNIX_ITEMS = {PARAMS_ITEM: "model_params", OPT_STATE_ITEM: "optimizer_state"}


def _read_tunix_checkpoint(path: Path) -> CheckpointInfo | None:
    """A step folder written by Tunix's trainers (Orbax CheckpointManager): `<N>/model_params`,
    `<N>/optimizer_state` and Orbax's `_CHECKPOINT_METADATA`, whose `custom_metadata["course"]`
    is the course's sidecar (part 06's training puts it there, so it is saved atomically with
    the arrays). Orbax writes into a temporary folder and renames it when complete, so a
    folder with this name and metadata is a finished checkpoint."""
    try:
        meta = json.loads((path / TUNIX_METADATA).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not (path / TUNIX_ITEMS[PARAMS_ITEM]).is_dir():
        return None
    custom = meta.get("custom_metadata") or {}
    sidecar = dict(custom.get("course") or {}) if isinstance(custom, dict) else {}
    sidecar["step"] = int(path.name)
    if isinstance(custom, dict) and "global_step" in custom:
        sidecar["global_step"] = custom["global_step"]
    return CheckpointInfo(path=path, step=int(path.name), sidecar=sidecar, items=dict(TUNIX_ITEMS))


def list_checkpoints(directory: str | os.PathLike, stage: str | None = None) -> list[CheckpointInfo]:
    """Every valid checkpoint in `directory`, oldest step first; half-written ones are skipped.
    `stage` keeps only those whose sidecar names that stage (part 06)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        info = read_checkpoint_info(child)
        if info is not None and (stage is None or info.stage == stage):
            found.append(info)
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(directory: str | os.PathLike, stage: str | None = None) -> CheckpointInfo | None:
    """The newest valid checkpoint in `directory` (optionally of one `stage`), or None (part 06).

    Folders without a readable `meta.json` for their own step — a save killed midway, a copy
    that lost files — are skipped, so a resumed run falls back to the previous checkpoint.
    """
    found = list_checkpoints(directory, stage=stage)
    return found[-1] if found else None


# --- restoring -------------------------------------------------------------------------------


def check_config(info: CheckpointInfo, config: TrainingConfig, *, allow_config_change: bool = False) -> list[str]:
    """Compare a checkpoint's recorded config with `config` (a `TrainingConfig`) (part 06).

    Returns the changed settings as "field: saved → now" strings (empty when they match or the
    checkpoint recorded no fingerprint). Raises `ConfigMismatchError` on a change unless
    `allow_config_change=True`, in which case it only warns.
    """
    saved = info.fingerprint
    if saved is None or saved == config.fingerprint():
        return []
    now = config.to_dict()
    old = info.sidecar.get("config")
    if isinstance(old, dict):
        changes = [
            f"{k}: {old.get(k, '<absent>')!r} → {now.get(k, '<absent>')!r}"
            for k in sorted(set(old) | set(now))
            if old.get(k, "<absent>") != now.get(k, "<absent>")
        ]
    else:
        changes = [f"config_fingerprint: {saved!r} → {config.fingerprint()!r}"]
    changes = changes or [f"config_fingerprint: {saved!r} → {config.fingerprint()!r}"]
    message = (
        f"{info} was saved with a different configuration (fingerprint {saved}, now "
        f"{config.fingerprint()}). Changed: {'; '.join(changes)}. Either go back to the saved "
        f"settings (load_run_config() reads the run's config.json), or start a fresh run "
        f"(point COURSE_RUN_DIR at a new folder, or delete {info.path.parent}), or continue "
        "anyway with allow_config_change=True (reasonable for max_steps, time_budget_minutes "
        "or checkpoint_every; not for lora_rank or model)."
    )
    if not allow_config_change:
        raise ConfigMismatchError(message)
    warnings.warn(message, stacklevel=2)
    return changes


def restore_checkpoint(
    info: CheckpointInfo | str | os.PathLike,
    params_target: Any,
    opt_state_target: Any = None,
    *,
    config: TrainingConfig | None = None,
    allow_config_change: bool = False,
) -> tuple[Any, Any]:
    """Read a checkpoint back as `(params, opt_state)` shaped and placed like the targets (part 06).

    `params_target` / `opt_state_target` are pytrees of the same structure as what was saved:
    the live LoRA `nnx.State` and optimiser state (their values are ignored), or abstract trees
    of `jax.ShapeDtypeStruct`. Every restored leaf is `jax.device_put` onto the target leaf's
    sharding (a leaf without one goes to the first device), as Tunix's RLCluster needs; the
    dtype is the target's. `opt_state` is None when `opt_state_target` is None. With `config`,
    the checkpoint's config fingerprint must match (see `check_config`).
    """
    import orbax.checkpoint as ocp

    if not isinstance(info, CheckpointInfo):
        path = Path(info)
        found = read_checkpoint_info(path)
        if found is None:
            raise FileNotFoundError(
                f"{path} is not a complete checkpoint (no valid {SIDECAR}); use "
                "latest_checkpoint(directory) to find the newest complete one."
            )
        info = found
    if config is not None:
        check_config(info, config, allow_config_change=allow_config_change)
    _check_tree("params_target", params_target, "nnx.state(model, nnx.LoRAParam)")
    if opt_state_target is not None:
        _check_tree("opt_state_target", opt_state_target, "nnx.state(optimizer, nnx.optimizer.OptState)")
    if opt_state_target is not None and not info.has_opt_state:
        raise ValueError(
            f"{info} holds no optimiser state; pass opt_state_target=None and start a fresh "
            "optimiser (its moments restart from zero)."
        )

    checkpointer = ocp.StandardCheckpointer()
    try:
        params = _restore_item(checkpointer, info, PARAMS_ITEM, params_target)
        opt_state = None
        if opt_state_target is not None:
            opt_state = _restore_item(checkpointer, info, OPT_STATE_ITEM, opt_state_target)
    finally:
        checkpointer.close()
    return params, opt_state


def _restore_item(checkpointer: Any, info: CheckpointInfo, item: str, target: Any) -> Any:
    import jax

    abstract = jax.tree.map(_abstract_leaf, target)
    _check_fits(checkpointer, info, item, abstract)
    try:
        restored = checkpointer.restore(info.path / info.items[item], abstract)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"the {item} saved in {info} do not fit the target you passed (a different LoRA "
            f"rank, model or optimiser?): {err}\nBuild the target with the settings of the run "
            "that saved it, or start fresh."
        ) from None
    return jax.tree.map(lambda leaf, spec: jax.device_put(leaf, spec.sharding), restored, abstract)


def _check_fits(checkpointer: Any, info: CheckpointInfo, item: str, abstract: Any) -> None:
    """Compare the saved tree's paths and shapes with the target's before Orbax reads anything,
    naming the differences (Orbax's own error is long, and a failed restore leaves noise)."""
    import jax

    try:
        saved_tree = checkpointer.metadata(info.path / info.items[item]).item_metadata.tree
        saved = {_path_name(p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
    except Exception:  # unreadable metadata: let the restore itself report
        return
    wanted = {_path_name(p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    problems = [f"{k}: saved {saved[k]}, target {wanted[k]}" for k in sorted(saved.keys() & wanted.keys())
                if saved[k] != wanted[k]]
    problems += [f"{k}: only in the checkpoint" for k in sorted(saved.keys() - wanted.keys())]
    problems += [f"{k}: only in the target" for k in sorted(wanted.keys() - saved.keys())]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... ({len(problems)} differences)" if len(problems) > 6 else "")
        raise ValueError(
            f"the {item} saved in {info} do not fit the target you passed (a different LoRA rank, "
            f"model or optimiser?): {shown}. Build the target with the settings of the run that "
            "saved it, or start fresh."
        )


def _path_name(path: Any) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _abstract_leaf(leaf: Any) -> Any:
    import jax
    import numpy as np

    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if not hasattr(leaf, "shape"):
        leaf = np.asarray(leaf)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
