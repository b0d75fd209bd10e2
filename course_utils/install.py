"""Install the course's pinned packages (never from git) where they are missing, on Kaggle only
(part 01); on a TPU host also `jax[tpu]` when libtpu is not the one the pinned jax requires."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from course_utils.env import installed_version, is_kaggle

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"


def requirement_pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """{name: pinned version} from requirements.txt beside the package (a checkout, the Kaggle
    dataset), else from the installed package's metadata (pyproject.toml reads the same file)."""
    try:
        installed = [] if path.is_file() else metadata.requires("course-utils") or []
    except metadata.PackageNotFoundError:
        installed = []
    lines = path.read_text().splitlines() if path.is_file() else installed
    reqs = [Requirement(text) for line in lines if (text := line.split("#", 1)[0].strip())]
    return {r.name.lower(): str(r.specifier).removeprefix("==") for r in reqs}  # exact pins only


PINS: dict[str, str] = requirement_pins()
# What `ensure_packages` installs: not the tests' tools, the Kaggle CLI or numpy (the image's).
NOT_RUNTIME = ("numpy", "kaggle", "jupytext", "nbmake", "nbclient", "ipykernel", "pytest",
               "hypothesis")
RUNTIME = tuple(name for name in PINS if name not in NOT_RUNTIME)


def missing_packages(names: tuple[str, ...] = RUNTIME) -> list[str]:
    """Requirement strings (`name==version`) for the packages that are absent or differ."""
    if not PINS:
        raise RuntimeError("course_utils has no pins (no requirements.txt beside it, not "
                           "installed): `pip install` this repository, or attach it as a dataset.")
    return [f"{name}=={PINS[name]}" for name in names if installed_version(name) != PINS[name]]


def libtpu_requirement() -> str | None:
    """libtpu as the pinned jax's `tpu` extra requires it (None if jax is not at its pin)."""
    if installed_version("jax") != PINS["jax"]:
        return None
    return next((f"libtpu{r.specifier}" for r in map(Requirement, metadata.requires("jax") or [])
                 if r.name == "libtpu" and r.marker and r.marker.evaluate({"extra": "tpu"})), None)


def tpu_host_signs(environ: dict[str, str] | None = None, dev: Path = Path("/dev")) -> list[str]:
    """What marks a TPU VM, without JAX: Kaggle's ISTPUVM=1, Cloud TPU's variables, chips as
    /dev/accel* (v4 and older) or VFIO groups /dev/vfio/<n> (v5e)."""
    environ = os.environ if environ is None else environ
    signs = [f"{name}={environ[name]}" for name in ("ISTPUVM", "TPU_NAME", "TPU_ACCELERATOR_TYPE")
             if environ.get(name, "").strip() not in ("", "0")]
    chips = [*dev.glob("accel*"), *(p for p in dev.glob("vfio/*") if p.name.isdigit())]
    return signs + sorted(map(str, chips))


def packages_to_install(tpu: bool) -> list[str]:
    """Missing or other pins, plus `jax[tpu]` and its libtpu on a TPU host whose libtpu differs."""
    need, have = libtpu_requirement(), installed_version("libtpu")
    if not tpu or need and have and Requirement(need).specifier.contains(have, prereleases=True):
        return missing_packages()
    return missing_packages() + [f"jax[tpu]=={PINS['jax']}"] + ([need] if need else [])


def ensure_packages(tpu: bool | None = None) -> None:
    """Install what is missing on Kaggle (asking for a restart if JAX changed); elsewhere say so."""
    wanted = packages_to_install(bool(tpu_host_signs()) if tpu is None else tpu)
    if not wanted:
        print("packages: all pinned packages present, nothing to install")
    elif not is_kaggle():
        print(f"packages: would install {', '.join(wanted)}\n  (not installing outside Kaggle: "
              "run `pip install -r requirements.txt`)")
    else:
        print("packages: installing " + ", ".join(wanted))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=True)
        importlib.invalidate_caches()
        if any(w.startswith(("jax", "jaxlib", "libtpu")) for w in wanted):
            print("packages: jax/jaxlib/libtpu changed: restart the kernel (Run → Restart and "
                  "clear output) and run from the top, so that the new JAX and TPU runtime load.")
