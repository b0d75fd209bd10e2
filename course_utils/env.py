"""Where the course runs: Kaggle or not, which accelerator, where outputs go, secrets (part 01).

JAX is imported inside the functions that need it, on purpose: part 01's install cell uses this
module before JAX is installed (or replaced by `jax[tpu]` on a TPU host).
"""

from __future__ import annotations

import math
import os
import platform as _platform
import shutil
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

KAGGLE_WORKING = Path("/kaggle/working")
KAGGLE_INPUT = Path("/kaggle/input")
PACKAGE_ROOT = Path(__file__).resolve().parent.parent

# Hardware the course targets, for part 01's table. Memory is per core/chip.
HARDWARE = [
    {"name": "Kaggle TPU v5e-8", "devices": "8 chips", "memory_gb_each": 16, "profile": "tpu",
     "fits": "Gemma 3 1B + LoRA, G=8, 256+512 tokens, micro batch 1, mesh (2, 4); rehearsed on simulated devices only"},
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


MESH_AXES = ("fsdp", "tp")


WEIGHT_SPECS: dict[str, list[tuple[str, tuple[int, ...], tuple[Any, ...]]]] = {}


def weight_specs(model_config: Any) -> list[tuple[str, tuple[int, ...], tuple[Any, ...]]]:
    """(name, shape, partition spec) of every Gemma 3 weight, from shapes alone; cached per config."""
    key = repr(model_config)
    if key not in WEIGHT_SPECS:
        import jax
        from flax import nnx
        from tunix.models.gemma3.model import Gemma3

        abstract = nnx.eval_shape(lambda: Gemma3(model_config, rngs=nnx.Rngs(0)))
        state = nnx.state(abstract, nnx.Param)
        specs = jax.tree.leaves(nnx.get_partition_spec(state),
                                is_leaf=lambda x: x is None or isinstance(x, jax.sharding.PartitionSpec))
        rows = []
        for (path, leaf), spec in zip(jax.tree.leaves_with_path(state), specs):
            keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
            name = "/".join(k for k in keys if k not in ("value", "layers") and not k.isdigit())
            rows.append((name, tuple(leaf.shape), tuple(spec or ())))
        WEIGHT_SPECS[key] = rows
    return WEIGHT_SPECS[key]


def mesh_problems(shape: tuple[int, int], model_config: Any) -> list[str]:
    """Why a (fsdp, tp) mesh cannot hold this Gemma 3 (part 01); an empty list when it can.

    Tunix's sharding rules split each weight along named axes: `tp` splits the attention heads,
    the MLP width and the vocabulary, `fsdp` splits the embedding width. An axis of size k can
    only split a dimension whose length k divides, so Gemma 3 1B's 4 query heads rule out tp=8.
    Computed from shapes alone (no devices needed).
    """
    fsdp, tp = (int(x) for x in shape)
    if fsdp < 1 or tp < 1:
        return [f"mesh shape {tuple(shape)} must have positive sizes"]
    sizes = {"fsdp": fsdp, "tp": tp}
    problems: dict[str, list[str]] = {}
    for where, shape_, spec in weight_specs(model_config):
        for dim, axes in zip(shape_, spec):
            if axes is None:
                continue
            names = (axes,) if isinstance(axes, str) else tuple(axes)
            ways = math.prod(sizes.get(a, 1) for a in names)
            if dim % ways:
                problems.setdefault(f"{'/'.join(names)}={ways} cannot split a dimension of {dim}", []).append(where)
    return [f"{reason} in {len(w)} weights ({', '.join(sorted(set(w)))})" for reason, w in problems.items()]


def valid_mesh_shapes(n_devices: int, model_config: Any) -> list[tuple[int, int]]:
    """Every (fsdp, tp) with fsdp × tp = n_devices that can hold the model, most tp first."""
    shapes = [(n_devices // tp, tp) for tp in range(n_devices, 0, -1) if n_devices % tp == 0]
    return [s for s in shapes if not mesh_problems(s, model_config)]


def choose_mesh_shape(n_devices: int, model_config: Any) -> tuple[int, int]:
    """The course's mesh for `n_devices` (part 01): as much tensor parallelism as the heads allow,
    the rest on fsdp — (2, 4) for Gemma 3 1B (4 query heads, 1 KV head) on 8 devices, (1, 4) on
    4, (1, 1) on 1.

    Why tp first: `tp` splits the logits over the vocabulary, the largest activation of a GRPO
    step, while `fsdp` splits only the weights (`python -m tools.rehearse --compare-meshes`
    measures the candidates' per-device memory). The official Tunix Gemma 3 1B config uses (2, 4).
    """
    if n_devices < 1:
        raise ValueError(f"n_devices={n_devices} must be at least 1")
    shapes = valid_mesh_shapes(n_devices, model_config)
    if not shapes:  # (n, 1) always splits only the embedding width; say what is wrong
        raise ValueError(
            f"no (fsdp, tp) mesh of {n_devices} devices can hold this model: "
            f"{'; '.join(mesh_problems((n_devices, 1), model_config))}. Use fewer devices."
        )
    return shapes[0]


def make_mesh(shape: tuple[int, int] | None = None, model_config: Any = None) -> Any:
    """A ('fsdp', 'tp') mesh over all devices (part 01).

    `shape` defaults to `choose_mesh_shape(len(jax.devices()), model_config)` — (2, 4) on a TPU
    v5e-8 for Gemma 3 1B — or to (1, n) when no `model_config` is given. A shape the devices or
    the model's heads cannot take raises ValueError saying why. Uses `jax.sharding.Mesh`
    (jax.make_mesh's explicit axes break Gemma 3's embedding gather in jax 0.10). Activate it
    with `jax.set_mesh(mesh)`.
    """
    import jax
    import numpy as np

    devices = jax.devices()
    if shape is None:
        shape = choose_mesh_shape(len(devices), model_config) if model_config is not None else (1, len(devices))
    shape = (int(shape[0]), int(shape[1]))
    if shape[0] * shape[1] != len(devices):
        raise ValueError(
            f"mesh shape {shape} needs {shape[0] * shape[1]} devices but {len(devices)} are present; "
            f"use a shape whose product is {len(devices)}."
        )
    if model_config is not None:
        problems = mesh_problems(shape, model_config)
        if problems:
            good = valid_mesh_shapes(len(devices), model_config)
            raise ValueError(f"mesh shape {shape} cannot hold this model: {'; '.join(problems)}. "
                             f"Shapes that can: {good} (course_utils.env.choose_mesh_shape picks {good[0] if good else None}).")
    return jax.sharding.Mesh(np.array(devices).reshape(shape), MESH_AXES)


TPU_DEVICES = 8  # the tpu profile's machine: Kaggle TPU v5e-8, 8 chips


class DeviceMismatch(RuntimeError):
    """The devices JAX sees are not the ones the profile is sized for; the message says what to do."""


def check_devices(config: Any, devices: Any = None) -> None:
    """Refuse to run the `tpu` profile anywhere but on the TPU chips it is sized for (parts 01,
    04, 06; `model.load_model` and `training.main` call it).

    Without this, a Kaggle session that came up without a TPU (or a laptop with COURSE_PROFILE=tpu)
    would start training Gemma 3 1B on the host CPU. It wants `TPU_DEVICES` TPU devices, or
    COURSE_TPU_DEVICES of them (another TPU size); COURSE_SKIP_DEVICE_CHECK=1 skips it. Other
    profiles, and the tiny model (a rehearsal of the tpu path on simulated devices), are not checked.
    """
    if getattr(config, "profile", None) != "tpu" or getattr(config, "model", None) == "tiny":
        return
    if os.environ.get("COURSE_SKIP_DEVICE_CHECK", "").strip() == "1":
        print("devices: COURSE_SKIP_DEVICE_CHECK=1, not checking that the tpu profile runs on TPUs")
        return
    wanted_text = os.environ.get("COURSE_TPU_DEVICES", "").strip()
    try:
        wanted = int(wanted_text) if wanted_text else TPU_DEVICES
        if wanted < 1:
            raise ValueError
    except ValueError:
        raise DeviceMismatch(f"COURSE_TPU_DEVICES={wanted_text!r} must be a whole number of TPU devices "
                             f"(like 8), or unset for {TPU_DEVICES}.") from None
    if devices is None:
        import jax

        devices = jax.devices()
    tpus = [d for d in devices if d.platform.lower() == "tpu"]
    if len(tpus) == len(devices) == wanted:
        return
    kinds = Counter(f"{d.platform.lower()} ({d.device_kind})" for d in devices)
    found = ", ".join(f"{n} × {k}" for k, n in kinds.items()) or "no devices"
    raise DeviceMismatch(
        f"the 'tpu' profile needs {wanted} TPU devices but JAX sees {found}. On Kaggle pick "
        "Settings → Accelerator → TPU v5e-8 (and restart the session); on another machine use "
        "COURSE_PROFILE=cpu (or gpu). COURSE_TPU_DEVICES=N accepts another number of TPU chips; "
        "COURSE_SKIP_DEVICE_CHECK=1 runs anyway."
    )


def device_memory_gib(device: Any) -> float | None:
    """The memory JAX may use on one device, in GiB (`memory_stats()["bytes_limit"]`), or None
    where the backend does not report it (the CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # not implemented on some backends
        return None
    limit = (stats or {}).get("bytes_limit")
    return round(limit / 2**30, 2) if limit else None


def describe() -> dict[str, Any]:
    """A summary of this machine for part 01: platform, devices and their memory, Kaggle, the
    versions of JAX, jaxlib, libtpu and the course's libraries."""
    import jax

    devices = jax.devices()
    memory = [device_memory_gib(d) for d in devices]
    info: dict[str, Any] = {
        "python": _platform.python_version(),
        "jax": jax.__version__,
        "accelerator": accelerator(),
        "device_count": len(devices),
        "device_kind": devices[0].device_kind,
        "device_memory_gib": memory if any(m is not None for m in memory) else "not reported by this backend",
        "kaggle": is_kaggle(),
        "default_profile": default_profile(),
    }

    for dist in ("jaxlib", "libtpu", "google-tunix", "flax", "optax", "orbax-checkpoint", "qwix"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "not installed"
    return info
