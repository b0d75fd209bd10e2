"""Helpers shared by the notebooks of the Gemma 3 GRPO + LoRA course (Tunix, JAX).

One flat module per job: `config` (every knob, profiles), `env` (machine, paths, secrets),
`install` (pinned packages on Kaggle), `notebooks` (pairing tooling), `run_course` (runs all
parts). Later parts add `data`, `rewards`, `model`, `training`, `evaluation`, `export`.
"""

__version__ = "0.1.0"
