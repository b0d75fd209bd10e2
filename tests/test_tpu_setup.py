"""What part 01 does on a Kaggle TPU VM, checked offline: the packages `ensure_packages()`
installs there (against jax's own metadata and the package index facts), TPU detection, and the
`tpu` profile's refusal to start on the wrong devices."""

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from course_utils import install

# Facts about the package index and Kaggle's TPU image (checked 2026-12-03 with
# `pip install --dry-run --report ... --python-version 3.12 --platform manylinux_2_31_x86_64
# "libtpu==0.0.42.*"`): PyPI serves libtpu-0.0.42.1-cp312-cp312-manylinux_2_31_x86_64.whl.
# Kaggle's TPU v5e-8 image runs Python 3.12 and preinstalls libtpu 0.0.17 (issue 12).
PYPI_LIBTPU_WHEELS = {"0.0.42.1": ("cp312",)}
KAGGLE_TPU_PYTHON = "3.12"
KAGGLE_TPU_IMAGE_LIBTPU = "0.0.17"


def test_libtpu_requirement_is_read_from_jax_metadata():
    need = install.libtpu_requirement()
    extra = [r for r in map(Requirement, metadata.requires("jax")) if r.name == "libtpu"]
    assert need == f"libtpu{extra[0].specifier}" == "libtpu==0.0.42.*"


def test_what_a_kaggle_tpu_vm_gets_exists_on_the_index_for_its_python():
    """The libtpu that jax requires has a wheel on PyPI for Kaggle's Python, and every pinned
    runtime package accepts that Python."""
    need = Requirement(install.libtpu_requirement()).specifier
    fitting = [v for v, tags in PYPI_LIBTPU_WHEELS.items()
               if need.contains(v) and f"cp{KAGGLE_TPU_PYTHON.replace('.', '')}" in tags]
    assert fitting, f"no libtpu wheel known on PyPI satisfies {need} for Python {KAGGLE_TPU_PYTHON}"
    assert not need.contains(KAGGLE_TPU_IMAGE_LIBTPU)  # so the image's own libtpu must be replaced
    for dist in ("jax", "jaxlib", "google-tunix", "flax", "orbax-checkpoint", "qwix"):
        requires = metadata.metadata(dist)["Requires-Python"]
        assert SpecifierSet(requires or "").contains(KAGGLE_TPU_PYTHON), (dist, requires)


@pytest.mark.parametrize("libtpu, adds", [(None, True), (KAGGLE_TPU_IMAGE_LIBTPU, True), ("0.0.42.1", False)])
def test_tpu_build_is_added_whenever_libtpu_differs(monkeypatch, libtpu, adds):
    real = install.installed_version
    monkeypatch.setattr(install, "installed_version", lambda d: libtpu if d == "libtpu" else real(d))
    wanted = install.packages_to_install(tpu=True)
    assert (wanted == ["jax[tpu]==0.10.2", "libtpu==0.0.42.*"]) is adds and (adds or wanted == [])
    assert install.packages_to_install(tpu=False) == []


def test_ensure_packages_on_a_kaggle_tpu_installs_and_asks_for_a_restart(monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    real = install.installed_version
    monkeypatch.setattr(install, "installed_version", lambda d: "0.0.17" if d == "libtpu" else real(d))
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))
    install.ensure_packages(tpu=True)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "jax[tpu]==0.10.2", "libtpu==0.0.42.*"]]
    assert "restart the kernel" in capsys.readouterr().out


def test_tpu_host_signs_recognise_v5e_and_older_tpus(tmp_path):
    dev = tmp_path / "dev"
    (dev / "vfio").mkdir(parents=True)
    (dev / "vfio" / "vfio").touch()  # the VFIO control node exists on many machines: not a TPU
    assert install.tpu_host_signs({}, dev) == []
    assert install.tpu_host_signs({"ISTPUVM": "1"}, dev) == ["ISTPUVM=1"]  # Kaggle's TPU image
    assert install.tpu_host_signs({"ISTPUVM": "0"}, dev) == []
    for n in range(4):
        (dev / "vfio" / str(n)).touch()  # v5e: one VFIO group per chip
    assert install.tpu_host_signs({}, dev) == [str(dev / "vfio" / str(n)) for n in range(4)]
    (dev / "accel0").touch()  # v4 and older
    assert str(dev / "accel0") in install.tpu_host_signs({"TPU_NAME": "x"}, dev)


class _Device:
    def __init__(self, platform, kind):
        self.platform, self.device_kind = platform, kind


def test_tpu_profile_refuses_devices_that_are_not_its_tpus(monkeypatch):
    from course_utils.config import TrainingConfig
    from course_utils.env import DeviceMismatch, check_devices

    monkeypatch.delenv("COURSE_SKIP_DEVICE_CHECK", raising=False)
    monkeypatch.delenv("COURSE_TPU_DEVICES", raising=False)
    tpu = TrainingConfig.for_profile("tpu")
    with pytest.raises(DeviceMismatch, match=r"needs 8 TPU devices but JAX sees 1 × cpu") as err:
        check_devices(tpu)  # this machine: one CPU device
    assert "TPU v5e-8" in str(err.value) and "COURSE_PROFILE=cpu" in str(err.value)
    v5e = [_Device("tpu", "TPU v5 lite")] * 8
    check_devices(tpu, v5e)
    with pytest.raises(DeviceMismatch, match=r"needs 8 TPU devices but JAX sees 4 × tpu \(TPU v5 lite\)"):
        check_devices(tpu, v5e[:4])
    with pytest.raises(DeviceMismatch, match="8 × cpu"):
        check_devices(tpu, [_Device("cpu", "cpu")] * 8)  # simulated devices are not TPUs
    monkeypatch.setenv("COURSE_TPU_DEVICES", "4")
    check_devices(tpu, v5e[:4])
    monkeypatch.setenv("COURSE_TPU_DEVICES", "four")
    with pytest.raises(DeviceMismatch, match="COURSE_TPU_DEVICES='four'"):
        check_devices(tpu, v5e[:4])
    monkeypatch.setenv("COURSE_SKIP_DEVICE_CHECK", "1")
    check_devices(tpu)
    monkeypatch.delenv("COURSE_SKIP_DEVICE_CHECK")
    for other in ("smoke", "cpu", "gpu"):
        check_devices(TrainingConfig.for_profile(other))
    check_devices(TrainingConfig.for_profile("tpu", model="tiny"))  # the rehearsal's stand-in model


def test_load_model_and_training_refuse_the_tpu_profile_on_this_cpu(monkeypatch, tmp_path):
    from course_utils.config import TrainingConfig
    from course_utils.env import DeviceMismatch
    from course_utils.model import load_model

    monkeypatch.delenv("COURSE_SKIP_DEVICE_CHECK", raising=False)
    monkeypatch.delenv("COURSE_TPU_DEVICES", raising=False)
    with pytest.raises(DeviceMismatch):
        load_model(TrainingConfig.for_profile("tpu"))  # before any download
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("COURSE_")}
    out = subprocess.run([sys.executable, "-m", "tools.train", "--profile", "tpu", "--run-dir",
                          str(tmp_path)], env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                         timeout=300, cwd=Path(install.__file__).resolve().parent.parent)
    assert out.returncode != 0 and "DeviceMismatch: the 'tpu' profile needs 8 TPU devices" in out.stderr


def test_describe_names_jax_jaxlib_libtpu_and_device_memory():
    from course_utils import env

    info = env.describe()
    assert info["jax"] == info["jaxlib"] == "0.10.2"
    assert info["libtpu"] == "not installed"  # this CPU machine
    assert info["device_memory_gib"] == "not reported by this backend" or all(
        isinstance(m, float) and m > 0 for m in info["device_memory_gib"])
