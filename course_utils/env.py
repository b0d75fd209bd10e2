"""Where the course runs: Kaggle or not, which accelerator, where outputs go, secrets (part 01).

Nothing here imports JAX at module import time, so the install cell of part 01 can use it
before JAX is installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

KAGGLE_WORKING = Path("/kaggle/working")
KAGGLE_INPUT = Path("/kaggle/input")
PACKAGE_ROOT = Path(__file__).resolve().parent.parent

# Hardware the course targets, for part 01's table. Memory is per core/chip.
HARDWARE = [
    {"name": "Kaggle TPU v5e-8", "devices": "8 chips", "memory_gb_each": 16, "profile": "tpu",
     "fits": "Gemma 3 1B + LoRA, G=4, 256+512 tokens, mesh (1, 8)"},
    {"name": "Kaggle TPU v3-8", "devices": "8 cores", "memory_gb_each": 16, "profile": "tpu",
     "fits": "Gemma 3 1B + LoRA, G=4, 256+512 tokens, mesh (1, 8)"},
    {"name": "Kaggle GPU T4 x2 / P100", "devices": "1-2 GPUs", "memory_gb_each": 16, "profile": "gpu",
     "fits": "Gemma 3 1B + LoRA on one device (slower than TPU)"},
    {"name": "Laptop / CI CPU", "devices": "CPU", "memory_gb_each": None, "profile": "cpu",
     "fits": "Gemma 3 270M + LoRA, G=4, 128+128 tokens (about 12 GB RAM)"},
]


def is_kaggle() -> bool:
    """True inside a Kaggle notebook or job (Kaggle sets KAGGLE_KERNEL_RUN_TYPE)."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or os.environ.get("KAGGLE_URL_BASE"))


def accelerator() -> str:
    """'tpu', 'gpu' or 'cpu': the platform of the first JAX device."""
    import jax

    platform = jax.devices()[0].platform.lower()
    return {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)


def default_profile() -> str:
    """The profile the hardware suggests: TPU → 'tpu', GPU → 'gpu', otherwise 'cpu'."""
    try:
        return {"tpu": "tpu", "gpu": "gpu"}.get(accelerator(), "cpu")
    except Exception:  # JAX missing or no backend: the CPU profile still works.
        return "cpu"


def run_dir(profile: str, create: bool = True) -> Path:
    """The folder a profile's outputs go to (config, checkpoints, metrics, plots, exports).

    `COURSE_RUN_DIR` wins; else `/kaggle/working/runs/<profile>` on Kaggle, else
    `runs/<profile>` at the repository root (or the current folder outside a checkout).
    """
    override = os.environ.get("COURSE_RUN_DIR", "").strip()
    if override:
        path = Path(override).expanduser()
    elif is_kaggle():
        path = KAGGLE_WORKING / "runs" / profile
    else:
        base = PACKAGE_ROOT if (PACKAGE_ROOT / "notebooks").is_dir() else Path.cwd()
        path = base / "runs" / profile
    if create:
        path.mkdir(parents=True, exist_ok=True)
        if is_kaggle() and not override:
            source = restore_previous_run(profile, path)
            if source is not None:
                print(f"run folder: continued from {source}")
    return path


def find_previous_run_dir(profile: str, inputs: Path | None = None) -> Path | None:
    """The `runs/<profile>` folder of an earlier kernel attached as input (kernel_sources),
    up to three levels below /kaggle/input; the most recently written one if several."""
    inputs = KAGGLE_INPUT if inputs is None else inputs
    candidates = []
    for depth in ("*", "*/*", "*/*/*"):
        candidates += [p for p in inputs.glob(f"{depth}/runs/{profile}") if p.is_dir()]

    def newest(path: Path) -> float:
        return max((f.stat().st_mtime for f in path.rglob("*") if f.is_file()), default=0.0)

    candidates = [p for p in dict.fromkeys(candidates) if newest(p) > 0]
    return max(candidates, key=lambda p: (newest(p), str(p))) if candidates else None


def restore_previous_run(profile: str, target: Path, inputs: Path | None = None) -> Path | None:
    """Copy the previous kernel's run folder into `target` when `target` holds no files yet.

    Returns the folder copied from, or None (nothing attached, or `target` already has work,
    which is never overwritten). Copies into a temp folder, then renames it into place.
    """
    if target.is_dir() and any(f.is_file() for f in target.rglob("*")):
        return None
    source = find_previous_run_dir(profile, inputs)
    if source is None:
        return None
    tmp = target.with_name(f".{target.name}.restoring-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(source, tmp)
    if target.is_dir():
        shutil.rmtree(target)  # holds only empty folders (checked above)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(target)
    return source


class Secret:
    """A secret value that never shows itself: `print`, `repr` and f-strings give '******'."""

    __slots__ = ("name", "_value")

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self._value = value

    def reveal(self) -> str:
        """The real value, to hand to a client library; never print it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.name!r}, '******')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled or saved")


def get_secret(name: str) -> Secret | None:
    """Read a secret from the environment, else from Kaggle Secrets (Add-ons → Secrets).

    Returns None when it is set in neither; the value is wrapped so it cannot be printed.
    """
    value = os.environ.get(name)
    if not value and is_kaggle():
        try:
            from kaggle_secrets import UserSecretsClient  # only exists on Kaggle

            value = UserSecretsClient().get_secret(name)
        except Exception:
            value = None
    return Secret(name, value) if value else None


def make_mesh(shape: tuple[int, int] | None = None) -> Any:
    """A ('fsdp', 'tp') mesh over all devices: (1, n) by default — (1, 8) on a TPU v3-8/v5e-8.

    Uses `jax.sharding.Mesh` (jax.make_mesh's explicit axes break Gemma 3's embedding gather
    in jax 0.10). Activate it with `jax.set_mesh(mesh)`.
    """
    import jax
    import numpy as np

    devices = jax.devices()
    shape = shape or (1, len(devices))
    if shape[0] * shape[1] != len(devices):
        raise ValueError(
            f"mesh shape {shape} needs {shape[0] * shape[1]} devices but {len(devices)} are present; "
            f"use a shape whose product is {len(devices)}."
        )
    return jax.sharding.Mesh(np.array(devices).reshape(shape), ("fsdp", "tp"))


def describe() -> dict[str, Any]:
    """A summary of this machine for part 01: platform, devices, Kaggle, versions."""
    import platform as _platform

    import jax

    devices = jax.devices()
    info: dict[str, Any] = {
        "python": _platform.python_version(),
        "jax": jax.__version__,
        "accelerator": accelerator(),
        "device_count": len(devices),
        "device_kind": devices[0].device_kind,
        "kaggle": is_kaggle(),
        "default_profile": default_profile(),
    }
    from importlib import metadata

    for dist in ("google-tunix", "flax", "optax", "orbax-checkpoint", "qwix"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "not installed"
    return info
