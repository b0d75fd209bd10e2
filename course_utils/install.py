"""Install the course's pinned packages where they are missing (part 01).

Locally, `pip install -r requirements.txt` has done this already and `ensure_packages()` only
checks. On Kaggle it pip-installs what is missing or at another version, and on a TPU host
`jax[tpu]` at the pinned JAX version whenever the installed libtpu is not the one that jax
requires (Kaggle's TPU image ships its own libtpu; jax 0.10.2 needs libtpu 0.0.42.*, which PyPI
has as cp312 wheels for Kaggle's Python 3.12). Nothing is ever installed from git.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from course_utils.env import is_kaggle

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"


def requirement_pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """The pins as {name: version}: requirements.txt beside the package (a checkout, the Kaggle
    dataset `tools.kaggle_job` uploads), else the installed package's own metadata, which
    pyproject.toml fills from that same file; {} when neither is there."""
    try:
        lines = path.read_text().splitlines() if path.is_file() else metadata.requires("course-utils") or []
    except metadata.PackageNotFoundError:
        lines = []
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name.lower()] = next((s.version for s in req.specifier if s.operator == "=="), "")
    return pins


PINS: dict[str, str] = requirement_pins()

# The pins `ensure_packages` installs: all but the tests' tools, the Kaggle CLI client and numpy
# (the notebook keeps the image's own build).
NOT_RUNTIME = ("numpy", "kaggle", "jupytext", "nbmake", "nbclient", "ipykernel", "pytest", "hypothesis")
RUNTIME = tuple(name for name in PINS if name not in NOT_RUNTIME)


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def missing_packages(names: tuple[str, ...] = RUNTIME) -> list[str]:
    """Requirement strings (`name==version`) for the packages that are absent or differ."""
    if not PINS:
        raise RuntimeError("course_utils has no pins: requirements.txt is not beside the package and the package is "
                           "not installed; `pip install` this repository (or attach it whole as a Kaggle dataset).")
    wanted = []
    for name in names:
        pin = PINS[name]
        have = installed_version(name)
        if have is None or (pin and have != pin):
            wanted.append(f"{name}=={pin}" if pin else name)
    return wanted


def libtpu_requirement() -> str | None:
    """The libtpu requirement of the pinned jax's `tpu` extra, read from jax's own metadata
    (jax 0.10.2: "libtpu==0.0.42.*"); None when jax is absent or not at its pin (installing
    `jax[tpu]` at the pin then brings the right one)."""
    if installed_version("jax") != PINS["jax"]:
        return None
    for text in metadata.requires("jax") or []:
        req = Requirement(text)
        if req.name == "libtpu" and req.marker is not None and req.marker.evaluate({"extra": "tpu"}):
            return f"{req.name}{req.specifier}"
    return None


def tpu_packages() -> list[str]:
    """What a TPU host needs on top of the pins: `jax[tpu]` at the pinned jax, with its libtpu."""
    libtpu = libtpu_requirement()
    return [f"jax[tpu]=={PINS['jax']}"] + ([libtpu] if libtpu else [])


def libtpu_matches() -> bool:
    """True when the installed libtpu is the one the pinned jax requires."""
    need, have = libtpu_requirement(), installed_version("libtpu")
    return need is not None and have is not None and Requirement(need).specifier.contains(have, prereleases=True)


def tpu_host_signs(environ: dict[str, str] | None = None, dev: Path = Path("/dev")) -> list[str]:
    """What marks this machine as a TPU VM, without importing JAX (which may not be installed).

    Kaggle's TPU image sets `ISTPUVM=1`; Cloud TPU VMs set TPU_NAME / TPU_ACCELERATOR_TYPE; TPU
    v4 and older show their chips as /dev/accel*, v5e and newer as VFIO groups /dev/vfio/<n>.
    """
    environ = os.environ if environ is None else environ
    signs = [f"{name}={environ[name]}" for name in ("ISTPUVM", "TPU_NAME", "TPU_ACCELERATOR_TYPE")
             if environ.get(name, "").strip() not in ("", "0")]
    signs += sorted(str(p) for p in dev.glob("accel*"))
    signs += sorted(str(p) for p in dev.glob("vfio/*") if p.name.isdigit())
    return signs


def packages_to_install(tpu: bool) -> list[str]:
    """The pip requirements still needed: missing or other-version pins, plus, on a TPU host,
    `tpu_packages()` unless the installed libtpu already is the one jax requires."""
    wanted = missing_packages()
    if tpu and not libtpu_matches():
        wanted += tpu_packages()
    return wanted


def ensure_packages(tpu: bool | None = None, dry_run: bool = False) -> None:
    """Install what is missing, on Kaggle only; elsewhere (or with `dry_run`) say what differs.

    When it changed jax, jaxlib or libtpu it says that a kernel restart is needed: a running
    kernel keeps the JAX (and the TPU runtime) it loaded.
    """
    wanted = packages_to_install(bool(tpu_host_signs()) if tpu is None else tpu)
    if not wanted:
        print("packages: all pinned packages present, nothing to install")
        return
    if dry_run or not is_kaggle():
        print(
            "packages: would install " + ", ".join(wanted)
            + ("" if dry_run else "\n  (not installing outside Kaggle: run `pip install -r requirements.txt`)")
        )
        return
    print("packages: installing " + ", ".join(wanted))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=True)
    importlib.invalidate_caches()
    if any(w.startswith(("jax", "jaxlib", "libtpu")) for w in wanted):
        print("packages: jax/jaxlib/libtpu changed: restart the kernel (Run → Restart and clear output) "
              "and run from the top, so that the new JAX and TPU runtime are the ones loaded.")


if __name__ == "__main__":
    ensure_packages()
