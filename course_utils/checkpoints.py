"""Finding and restoring part 06's checkpoints with Orbax's and Tunix's APIs: one per step
(`<directory>/<step>/model_params`), renamed into place when complete, the course's sidecar in
its custom metadata under "course"."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from tunix.sft.checkpoint_manager import CheckpointManager


def checkpoint_dir(run_dir: str | Path, stage: str) -> Path:
    """Where part 06 keeps a stage's checkpoints: `checkpoints/sft`, `checkpoints/grpo/actor`."""
    if stage not in ("sft", "grpo"):
        raise ValueError(f"stage={stage!r} is unknown; use 'sft' or 'grpo'")
    root = Path(run_dir) / "checkpoints" / stage
    return root / "actor" if stage == "grpo" else root


class ConfigMismatchError(ValueError):
    """A checkpoint was saved under other settings than the current `TrainingConfig`'s."""


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint: its folder, step and the course's sidecar (part 06)."""

    path: Path
    step: int
    sidecar: dict[str, Any]

    @property
    def params_path(self) -> Path:
        return self.path / "model_params"

    @property
    def stage(self) -> str | None:
        return self.sidecar.get("stage")

    @property
    def fingerprint(self) -> str | None:
        return self.sidecar.get("config_fingerprint")

    def __str__(self) -> str:
        extra = ", ".join(f"{k} {self.sidecar[k]}" for k in ("stage", "phase") if k in self.sidecar)
        return f"checkpoint step {self.step} at {self.path}" + (f" ({extra})" if extra else "")


def latest_checkpoint(directory: str | Path) -> CheckpointInfo | None:
    """The newest complete checkpoint in `directory` (Orbax's `latest_step`), or None (part 06)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    options = ocp.CheckpointManagerOptions(create=False, max_to_keep=None)  # creates, saves, deletes nothing
    with ocp.CheckpointManager(directory, options=options) as manager:
        step = manager.latest_step()
    if step is None:
        return None
    custom = ocp.metadata.get_step_metadata(directory / str(step)).custom_metadata or {}
    steps = {"global_step": custom["global_step"]} if "global_step" in custom else {}
    sidecar = {**(custom.get("course") or {}), **steps}
    return CheckpointInfo(directory / str(step), int(step), sidecar)


def restore_lora(model: Any, directory: str | Path, step: int | None = None) -> int:
    """Load the LoRA parameters of checkpoint `step` (default: the newest) in `directory` into the
    LoRA `model` with Tunix's `CheckpointManager.maybe_restore`; returns the step (parts 06-08)."""
    manager = CheckpointManager(str(Path(directory).resolve()))
    try:
        restored, _ = manager.maybe_restore(model, step=step, restore_only_lora_params=True)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"the LoRA parameters in {directory} do not fit this model ({err}). Was "
                         "it trained with another lora_rank or model? Build the model with the "
                         "run's config (load_run_config) first.") from None
    finally:
        manager.close()
    return restored
