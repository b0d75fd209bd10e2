"""course_utils.env and course_utils.install: detection, paths, secrets, mesh, pins."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import pytest

from course_utils import env, install

ROOT = Path(__file__).resolve().parent.parent


def test_kaggle_detection(monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delenv("KAGGLE_URL_BASE", raising=False)
    assert not env.is_kaggle()
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert env.is_kaggle()


def test_default_profile_on_this_machine():
    assert env.default_profile() == "cpu"


def test_default_profile_follows_the_accelerator(monkeypatch):
    for platform, profile in (("tpu", "tpu"), ("gpu", "gpu"), ("cuda", "gpu"), ("cpu", "cpu"), ("metal", "cpu")):
        device = type("Device", (), {"platform": platform})()
        monkeypatch.setattr(jax, "devices", lambda d=device: [d])
        assert env.default_profile() == profile
    monkeypatch.setattr(jax, "devices", lambda: 1 / 0)  # no backend: the CPU profile still works
    assert env.default_profile() == "cpu"


def test_run_dir_override_kaggle_and_local(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_RUN_DIR", str(tmp_path / "custom"))
    assert env.run_dir("cpu") == tmp_path / "custom" and (tmp_path / "custom").is_dir()
    monkeypatch.delenv("COURSE_RUN_DIR")
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    assert env.run_dir("tpu", create=False) == env.KAGGLE_WORKING / "runs" / "tpu"
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    monkeypatch.delenv("KAGGLE_URL_BASE", raising=False)
    assert env.run_dir("smoke", create=False) == env.PACKAGE_ROOT / "runs" / "smoke"


def test_secret_never_shows_its_value(monkeypatch, capsys):
    token = "kaggle-secret-value-123"
    monkeypatch.setenv("KAGGLE_KEY", token)
    secret = env.get_secret("KAGGLE_KEY")
    print(secret, repr(secret), f"{secret}", "%s" % secret, [secret], {"k": secret})
    out = capsys.readouterr().out
    assert token not in out and "******" in out
    assert secret.reveal() == token
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secret)


def test_missing_secret_is_none(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delenv("KAGGLE_URL_BASE", raising=False)
    assert env.get_secret("HF_TOKEN") is None


def test_make_mesh_shapes():
    mesh = env.make_mesh()
    assert dict(mesh.shape) == {"fsdp": 1, "tp": len(jax.devices())}
    with pytest.raises(ValueError, match=r"needs 8 devices but 1 are present"):
        env.make_mesh((2, 4))


def test_mesh_follows_the_heads_of_gemma3_1b_and_the_tiny_model():
    from tunix.models.gemma3.model import ModelConfig

    from course_utils.model import tiny_model_config

    for model_config in (ModelConfig.gemma3_1b_it(), tiny_model_config()):  # both: 4 query heads, 1 KV head
        problems = env.mesh_problems((1, 8), model_config)
        assert len(problems) == 1 and "tp=8 cannot split a dimension of 4" in problems[0], problems
        assert "q_einsum" in problems[0] and "attn_vec_einsum" in problems[0]
        assert env.valid_mesh_shapes(8, model_config) == [(2, 4), (4, 2), (8, 1)]
        assert env.choose_mesh_shape(8, model_config) == (2, 4)
        assert env.choose_mesh_shape(4, model_config) == (1, 4)
        assert env.choose_mesh_shape(1, model_config) == (1, 1)
    assert "52 weights" in env.mesh_problems((1, 8), ModelConfig.gemma3_1b_it())[0]  # 2 per layer, 26 layers
    # The 270M: 4 query heads as well, width 640 splits 8 ways on fsdp.
    assert env.choose_mesh_shape(8, ModelConfig.gemma3_270m()) == (2, 4)


def test_make_mesh_refuses_a_shape_the_model_cannot_take(monkeypatch):
    from course_utils.model import tiny_model_config

    fake = [jax.devices()[0]] * 8  # make_mesh only reshapes the list; the error comes first
    monkeypatch.setattr(jax, "devices", lambda: fake)
    with pytest.raises(ValueError, match=r"\(1, 8\) cannot hold this model: tp=8 cannot split.*\(2, 4\)"):
        env.make_mesh((1, 8), tiny_model_config())


def test_describe_reports_versions():
    info = env.describe()
    assert info["jax"] == jax.__version__ and info["accelerator"] == "cpu"
    assert info["google-tunix"] == "0.1.7"


def test_install_pins_are_requirements_txt():
    lines = [l.split("#")[0].strip() for l in (ROOT / "requirements.txt").read_text().splitlines()]
    assert install.PINS == {l.split("==")[0].lower(): l.split("==")[1] for l in lines if l}
    assert install.PINS["jax"] == "0.10.2"


def test_an_installed_package_reads_its_pins_from_its_own_metadata(tmp_path):
    """pyproject.toml takes the dependencies from requirements.txt; a wheel installed without the
    repository (no requirements.txt beside it) gets the same pins from its metadata; `tools/`
    stays out of the wheel."""
    src, dist, site = tmp_path / "src", tmp_path / "dist", tmp_path / "site"
    shutil.copytree(ROOT / "course_utils", src / "course_utils", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.txt", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], check=True)
    wheel = next(dist.glob("course_utils-*.whl"))
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("tools/")]
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True)
    code = "import json, course_utils.install as i; print(json.dumps([i.__file__, i.PINS]))"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    where, pins = json.loads(done.stdout.splitlines()[-1])
    assert where.startswith(str(site)) and not (site / "requirements.txt").exists()
    assert pins == install.PINS


def test_environment_matches_the_pins():
    assert install.missing_packages(tuple(install.PINS)) == []


def test_packages_to_install_lists_mismatches(monkeypatch):
    assert install.packages_to_install(tpu=False) == []
    monkeypatch.setitem(install.PINS, "tqdm", "0.0.1")
    assert "tqdm==0.0.1" in install.packages_to_install(tpu=False)


def test_ensure_packages_never_installs_outside_kaggle(monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delenv("KAGGLE_URL_BASE", raising=False)
    monkeypatch.setitem(install.PINS, "tqdm", "0.0.1")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    install.ensure_packages(tpu=False)
    assert "would install tqdm==0.0.1" in capsys.readouterr().out


def test_run_dir_on_kaggle_continues_from_an_attached_previous_run(monkeypatch, tmp_path, capsys):
    previous = tmp_path / "input" / "course-06-training" / "runs" / "tpu"
    (previous / "checkpoints").mkdir(parents=True)
    (previous / "config.json").write_text("{}")
    monkeypatch.setattr(env, "KAGGLE_INPUT", tmp_path / "input")
    monkeypatch.setattr(env, "KAGGLE_WORKING", tmp_path / "working")
    monkeypatch.delenv("COURSE_RUN_DIR", raising=False)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    path = env.run_dir("tpu")
    assert (path / "config.json").read_text() == "{}"
    assert "continued from" in capsys.readouterr().out
    (path / "config.json").write_text('{"mine": 1}')
    env.run_dir("tpu")  # existing work is never overwritten
    assert (path / "config.json").read_text() == '{"mine": 1}'
