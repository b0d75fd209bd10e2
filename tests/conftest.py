"""Model fixtures shared by the test files (part 04): each model is loaded once per session.

`cpu_loaded` is the real Gemma 3 270M (converted from its GGUF on the first run, then read
from the cache in ~/.cache/course_utils or COURSE_CACHE_DIR); `tiny_loaded` is the smoke
profile's random 2-layer Gemma 3. Both are the objects `course_utils.model.load_model` returns,
with the full vocabulary (`full_vocabulary=True`) so the tests keep their meaning whatever
`vocab_trim` says; tests/test_vocab.py checks the trimmed models against them.
"""

import pytest


@pytest.fixture(scope="session")
def cpu_loaded():
    from course_utils.config import TrainingConfig
    from course_utils.model import load_model

    return load_model(TrainingConfig.for_profile("cpu"), full_vocabulary=True)


@pytest.fixture(scope="session")
def tiny_loaded():
    from course_utils.config import TrainingConfig
    from course_utils.model import load_model

    return load_model(TrainingConfig.for_profile("smoke"), full_vocabulary=True)


@pytest.fixture(scope="session")
def short_cpu_config():
    """The cpu profile with short lengths, so tests compile small programs."""
    from course_utils.config import TrainingConfig

    return TrainingConfig.for_profile("cpu", max_prompt_length=32, max_generation_length=8, cache_size=40)


def _part06_session(run, config) -> str:
    """Part 06 as one Kaggle session: `config` saved as the run folder's config.json, then
    `python -m tools.train` in a fresh process (part 06's own cells)."""
    import os
    import subprocess
    import sys

    from course_utils.config import CONFIG_FILE

    run.mkdir(parents=True, exist_ok=True)
    config.save(run / CONFIG_FILE)
    env = {**os.environ, "COURSE_RUN_DIR": str(run), "JAX_PLATFORMS": "cpu", "COURSE_PROFILE": config.profile}
    out = subprocess.run([sys.executable, "-m", "tools.train"], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="session")
def part06_sessions(tmp_path_factory):
    """Part 06 run as two Kaggle sessions by the course's own training code (smoke profile).

    Session 1's time budget runs out during SFT: it stops with a checkpoint, as a Kaggle session
    stopped by `time_budget_minutes` does. Its output folder (`<first>/runs/smoke`, what Kaggle
    keeps of /kaggle/working) is then attached to session 2 as an input and copied into its
    empty run folder by `env.restore_previous_run`, as on Kaggle; session 2 has no budget and
    finishes both stages. Returns the two output folders and their logs.
    """
    import dataclasses
    import types

    from course_utils.config import TrainingConfig
    from course_utils.env import restore_previous_run

    smoke = TrainingConfig.for_profile("smoke")
    base = tmp_path_factory.mktemp("part06")
    inputs = base / "input"  # plays /kaggle/input
    first = inputs / "gemma3-grpo-course-06-training"
    second = base / "working"  # plays /kaggle/working of the next session

    log1 = _part06_session(first / "runs" / "smoke", dataclasses.replace(smoke, time_budget_minutes=0.0001))
    restored = restore_previous_run("smoke", second / "runs" / "smoke", inputs=inputs)
    assert restored == first / "runs" / "smoke"
    log2 = _part06_session(second / "runs" / "smoke", dataclasses.replace(smoke, time_budget_minutes=None))
    return types.SimpleNamespace(first=first, second=second, log1=log1, log2=log2, config=smoke)


@pytest.fixture(scope="session")
def part06_sft_only(tmp_path_factory):
    """A part 06 Kaggle session whose time budget ran out between SFT and GRPO, run by the
    course's own training code (smoke profile, one SFT step): every session trains at least one
    batch, so SFT finishes (step 1 of 1), and GRPO finds the budget spent and never starts.
    Returns the output folder (`<output>/runs/smoke`) and the log."""
    import types

    from course_utils.config import TrainingConfig

    config = TrainingConfig.for_profile("smoke", sft_steps=1, time_budget_minutes=0.0001)
    output = tmp_path_factory.mktemp("part06_sft_only")
    log = _part06_session(output / "runs" / "smoke", config)
    return types.SimpleNamespace(output=output, log=log, config=config)
