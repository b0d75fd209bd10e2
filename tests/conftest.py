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
