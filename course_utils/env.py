"""Where the course runs: Kaggle or not, devices and mesh, output folders, secrets (part 01).
JAX is imported inside functions: part 01 uses this module before JAX is installed."""

from __future__ import annotations

import math
import os
import platform
import shutil
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

KAGGLE_WORKING = Path("/kaggle/working")
KAGGLE_INPUT = Path("/kaggle/input")
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
TPU_DEVICES = 8  # the tpu profile's machine: Kaggle TPU v5e-8


def is_kaggle() -> bool:
    """True inside a Kaggle notebook or job."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or os.environ.get("KAGGLE_URL_BASE"))


def installed_version(dist: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def default_profile() -> str:
    """The profile the first JAX device suggests: TPU → 'tpu', GPU → 'gpu', otherwise 'cpu'."""
    try:
        import jax

        name = jax.devices()[0].platform.lower()
    except Exception:  # JAX missing or no backend: the CPU profile still works
        return "cpu"
    return {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu"}.get(name, "cpu")


def run_dir(profile: str, create: bool = True) -> Path:
    """The folder of a profile's outputs: `COURSE_RUN_DIR`, else /kaggle/working/runs/<profile>
    on Kaggle (continuing an attached earlier kernel's), else runs/<profile> in the checkout."""
    override = os.environ.get("COURSE_RUN_DIR", "").strip()
    checkout = PACKAGE_ROOT if (PACKAGE_ROOT / "notebooks").is_dir() else Path.cwd()
    root = KAGGLE_WORKING if is_kaggle() else checkout
    path = Path(override).expanduser() if override else root / "runs" / profile
    if create:
        path.mkdir(parents=True, exist_ok=True)
        source = restore_previous_run(profile, path) if is_kaggle() and not override else None
        if source is not None:
            print(f"run folder: continued from {source}")
    return path


def restore_previous_run(profile: str, target: Path, inputs: Path | None = None) -> Path | None:
    """Copy the newest `runs/<profile>` of an earlier kernel's output attached as input into an
    empty `target` (work is never overwritten) through a temp folder; returns the source or None."""
    if target.is_dir() and any(f.is_file() for f in target.rglob("*")):
        return None

    def newest(path: Path) -> float:
        return max((f.stat().st_mtime for f in path.rglob("*") if f.is_file()), default=0.0)

    inputs = KAGGLE_INPUT if inputs is None else inputs
    found = [p for d in ("*", "*/*", "*/*/*") for p in inputs.glob(f"{d}/runs/{profile}")]
    source = max(found, key=lambda p: (newest(p), str(p)), default=None)
    if source is None or newest(source) == 0:  # nothing attached, or no files in it
        return None
    tmp = target.with_name(f".{target.name}.restoring-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)  # only empty folders (checked above)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(target)
    return source


class Secret:
    """A secret value that never shows itself: `print`, `repr` and f-strings give '******'."""

    __slots__ = ("name", "_value")

    def __init__(self, name: str, value: str) -> None:
        self.name, self._value = name, value

    def reveal(self) -> str:
        """The real value, to hand to a client library; never print it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.name!r}, '******')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled or saved")


def get_secret(name: str) -> Secret | None:
    """A secret from the environment, else Kaggle Secrets (Add-ons → Secrets); None if unset."""
    value = os.environ.get(name)
    if not value and is_kaggle():
        try:
            from kaggle_secrets import UserSecretsClient  # only exists on Kaggle

            value = UserSecretsClient().get_secret(name)
        except Exception:
            value = None
    return Secret(name, value) if value else None


_WEIGHT_SPECS: dict[str, list[tuple[str, tuple[int, ...], tuple[Any, ...]]]] = {}


def weight_specs(model_config: Any) -> list[tuple[str, tuple[int, ...], tuple[Any, ...]]]:
    """(name, shape, partition spec) of every Gemma 3 weight, from shapes alone; cached."""
    key = repr(model_config)
    if key not in _WEIGHT_SPECS:
        from flax import nnx
        from tunix.models.gemma3.model import Gemma3

        state = nnx.state(nnx.eval_shape(lambda: Gemma3(model_config, rngs=nnx.Rngs(0))), nnx.Param)
        _WEIGHT_SPECS[key] = [
            ("/".join(str(k) for k in path if k != "layers" and not isinstance(k, int)),
             tuple(v.shape), tuple(v.get_metadata().get("out_sharding") or ()))
            for path, v in nnx.to_flat_state(state)]
    return _WEIGHT_SPECS[key]


def mesh_problems(shape: tuple[int, int], model_config: Any) -> list[str]:
    """Why a (fsdp, tp) mesh cannot hold this Gemma 3 (part 01); empty when it can. An axis of
    size k splits only dimensions k divides: Gemma 3 1B's 4 query heads rule out tp=8."""
    sizes = dict(zip(("fsdp", "tp"), (int(x) for x in shape)))
    problems: dict[str, list[str]] = {}
    for where, dims, spec in weight_specs(model_config):
        for dim, axes in zip(dims, spec):
            names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            ways = math.prod(sizes.get(a, 1) for a in names)
            if dim % ways:
                why = f"{'/'.join(names)}={ways} cannot split a dimension of {dim}"
                problems.setdefault(why, []).append(where)
    return [f"{why} in {len(w)} weights ({', '.join(sorted(set(w)))})"
            for why, w in problems.items()]


def valid_mesh_shapes(n_devices: int, model_config: Any) -> list[tuple[int, int]]:
    """Every (fsdp, tp) of `n_devices` that can hold the model, most tp first (part 01 says why)."""
    shapes = [(n_devices // tp, tp) for tp in range(n_devices, 0, -1) if n_devices % tp == 0]
    return [s for s in shapes if not mesh_problems(s, model_config)]


def choose_mesh_shape(n_devices: int, model_config: Any) -> tuple[int, int]:
    """The first of `valid_mesh_shapes` (part 01): (2, 4) on 8 devices, (1, 4) on 4, (1, 1) on 1."""
    shapes = valid_mesh_shapes(n_devices, model_config)
    if not shapes:
        why = "; ".join(mesh_problems((n_devices, 1), model_config)) if n_devices > 0 else "none"
        raise ValueError(f"no (fsdp, tp) mesh of {n_devices} devices can hold this model: {why}. "
                         "Use fewer devices.")
    return shapes[0]


def make_mesh(shape: tuple[int, int] | None = None, model_config: Any = None) -> Any:
    """A ('fsdp', 'tp') Mesh of all devices (part 01): `shape`, else `choose_mesh_shape`, else
    (1, n) without a model. (jax.make_mesh's explicit axes break Gemma 3's embedding gather.)"""
    import jax
    import numpy as np

    devices = jax.devices()
    n = len(devices)
    if shape is None:
        shape = (1, n) if model_config is None else choose_mesh_shape(n, model_config)
    shape = (int(shape[0]), int(shape[1]))
    if min(shape) < 1 or shape[0] * shape[1] != n:
        raise ValueError(f"mesh shape {shape} needs {shape[0] * shape[1]} devices but {n} are "
                         f"present; use two positive sizes whose product is {n}.")
    problems = mesh_problems(shape, model_config) if model_config is not None else []
    if problems:
        good = valid_mesh_shapes(n, model_config)
        raise ValueError(f"mesh shape {shape} cannot hold this model: {'; '.join(problems)}. "
                         f"Shapes that can: {good} (choose_mesh_shape picks the first).")
    return jax.sharding.Mesh(np.array(devices).reshape(shape), ("fsdp", "tp"))


class DeviceMismatch(RuntimeError):
    """The devices JAX sees are not the ones the profile is sized for; the message says why."""


def check_devices(config: Any, devices: Any = None) -> None:
    """Refuse the `tpu` profile (but its tiny model) anywhere but on its TPU chips (parts 01, 04,
    06), so that a session without a TPU never trains Gemma 3 1B on the host CPU."""
    if getattr(config, "profile", None) != "tpu" or getattr(config, "model", None) == "tiny":
        return
    if os.environ.get("COURSE_SKIP_DEVICE_CHECK", "").strip() == "1":
        print("devices: COURSE_SKIP_DEVICE_CHECK=1, not checking that the tpu profile runs on TPUs")
        return
    text = os.environ.get("COURSE_TPU_DEVICES", "").strip() or str(TPU_DEVICES)
    if not text.isdigit() or int(text) < 1:
        raise DeviceMismatch(f"COURSE_TPU_DEVICES={text!r} must be a whole number of TPU devices "
                             f"(like 8), or unset for {TPU_DEVICES}.")
    import jax

    devices = jax.devices() if devices is None else devices
    if len(devices) == int(text) and all(d.platform.lower() == "tpu" for d in devices):
        return
    kinds = Counter(f"{d.platform.lower()} ({d.device_kind})" for d in devices)
    found = ", ".join(f"{n} × {k}" for k, n in kinds.items()) or "no devices"
    raise DeviceMismatch(
        f"the 'tpu' profile needs {text} TPU devices but JAX sees {found}. On Kaggle pick "
        "Settings → Accelerator → TPU v5e-8 (and restart the session); on another machine use "
        "COURSE_PROFILE=cpu (or gpu). COURSE_TPU_DEVICES=N accepts another number of TPU chips; "
        "COURSE_SKIP_DEVICE_CHECK=1 runs anyway.")


def describe() -> dict[str, Any]:
    """This machine for part 01: devices, memory JAX may use on each (GiB), library versions."""
    import jax

    devices = jax.devices()
    try:
        limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
    except Exception:  # not implemented on some backends
        limits = [None]
    libraries = ("jaxlib", "libtpu", "google-tunix", "flax", "optax", "orbax-checkpoint", "qwix")
    return {
        "python": platform.python_version(), "jax": jax.__version__, "device_count": len(devices),
        "accelerator": devices[0].platform, "device_kind": devices[0].device_kind,
        "device_memory_gib": [round(m / 2**30, 2) for m in limits] if all(limits)
        else "not reported by this backend",
        "kaggle": is_kaggle(), "default_profile": default_profile(),
        **{name: installed_version(name) or "not installed" for name in libraries},
    }
