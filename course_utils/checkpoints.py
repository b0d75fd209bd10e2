"""Finding and restoring the checkpoints part 06's trainers write, through Orbax's and Tunix's APIs.

Tunix's trainers save one Orbax checkpoint per step (`<directory>/<step>/model_params`,
`optimizer_state`) with Orbax's `CheckpointManager`, which writes into a temporary folder and
renames it when complete, so a killed save is never listed. The course's sidecar (stage,
phase, config fingerprint, metrics so far) rides in that checkpoint's custom metadata under
"course" (`training.install_sidecar` puts it there), next to Tunix's own `global_step`.

>>> info = latest_checkpoint(run_dir / "checkpoints" / "sft")         # doctest: +SKIP
>>> restore_lora(actor, info.path.parent, info.step)                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from tunix.sft.checkpoint_manager import CheckpointManager

PARAMS_ITEM = "model_params"  # Tunix's item names
OPT_STATE_ITEM = "optimizer_state"


def checkpoint_dir(run_dir: str | Path, stage: str) -> Path:
    """Where part 06 keeps a stage's checkpoints: `checkpoints/sft`, `checkpoints/grpo/actor`
    (Tunix's RLCluster adds the role, `actor`, below the root it is given)."""
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
        """The Orbax folder of its LoRA parameters."""
        return self.path / PARAMS_ITEM

    @property
    def stage(self) -> str | None:
        return self.sidecar.get("stage")

    @property
    def phase(self) -> str | None:
        return self.sidecar.get("phase")

    @property
    def fingerprint(self) -> str | None:
        return self.sidecar.get("config_fingerprint")

    def __str__(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in (("stage", self.stage), ("phase", self.phase)) if v)
        return f"checkpoint step {self.step} at {self.path}" + (f" ({extra})" if extra else "")


def latest_checkpoint(directory: str | Path) -> CheckpointInfo | None:
    """The newest complete checkpoint in `directory` (Orbax's `latest_step`), or None (part 06).

    Its sidecar is the "course" entry of the step's custom metadata (Orbax's
    `get_step_metadata`), plus Tunix's `global_step`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    options = ocp.CheckpointManagerOptions(create=False, max_to_keep=None)  # creates, saves, deletes nothing
    with ocp.CheckpointManager(directory, options=options) as manager:
        step = manager.latest_step()
    if step is None:
        return None
    custom = dict(ocp.metadata.get_step_metadata(directory / str(step)).custom_metadata or {})
    sidecar = dict(custom.get("course") or {})
    if "global_step" in custom:
        sidecar["global_step"] = custom["global_step"]
    return CheckpointInfo(directory / str(step), int(step), sidecar)


def restore_lora(model: Any, directory: str | Path, step: int | None = None) -> int:
    """Load the LoRA parameters of checkpoint `step` (default: the newest) in `directory` into
    `model`, which already has LoRA layers, with Tunix's own `CheckpointManager.maybe_restore(...,
    restore_only_lora_params=True)`; returns the step (0 when there is none) (parts 06-07).

    A checkpoint of another LoRA rank or model fails with a clear error.
    """
    manager = CheckpointManager(str(Path(directory).resolve()))
    try:
        restored, _ = manager.maybe_restore(model, step=step, restore_only_lora_params=True)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"the LoRA parameters in {directory} do not fit this model ({err}). Was it trained with another "
            "lora_rank or model? Build the model with the run's config (load_run_config) first."
        ) from None
    finally:
        manager.close()
    return restored
