"""Part 06's SFT and GRPO cells from a shell, resumable, in one time budget (no evaluations).

    python -m tools.train [--profile P] [--run-dir D] [--allow-config-change]

The same tagged cells of notebooks/06_training.py the notebook runs (`training.run_cells`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import jax

from course_utils.config import CONFIG_FILE, TrainingConfig, load_run_config
from course_utils.data import load_splits
from course_utils.env import run_dir as default_run_dir
from course_utils.lora import apply_lora
from course_utils.model import load_model, model_mesh
from course_utils.training import GRPO_CELLS, SFT_CELLS, Deadline, run_cells


def run_config(run_dir: str | Path | None, profile: str | None) -> Any:
    """The configuration to train with: `<run_dir>/config.json` when it exists, else the
    profile's (part 02's saved one, or fresh)."""
    saved = Path(run_dir) / CONFIG_FILE if run_dir else None
    if saved is None or not saved.exists():
        return load_run_config(profile)
    config = TrainingConfig.load(saved)
    if profile and config.profile != profile:
        raise SystemExit(f"{saved} holds profile {config.profile!r}, not {profile!r}; "
                         "drop --profile or pick another --run-dir")
    print(f"config: profile {config.profile!r}, loaded {saved}")
    return config


def main(argv: list[str] | None = None) -> int:
    """Run part 06's SFT and GRPO cells on the profile's model, resumable, in one time budget."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--profile", default=None, help="smoke | cpu | gpu | tpu (default: COURSE_PROFILE / hardware)")
    parser.add_argument("--run-dir", default=None, help="default: the profile's run directory")
    parser.add_argument("--allow-config-change", action="store_true")
    args = parser.parse_args(argv)
    config = run_config(args.run_dir, args.profile)
    run = Path(args.run_dir).resolve() if args.run_dir else default_run_dir(config.profile)  # Orbax needs absolute paths
    mesh = model_mesh(config)
    jax.set_mesh(mesh)
    loaded = load_model(config, mesh)
    actor = apply_lora(loaded.model, config, mesh)
    names = dict(config=config, RUN_DIR=run, mesh=mesh, loaded=loaded, actor=actor, tokenizer=loaded.tokenizer,
                 model_config=loaded.model_config, train=load_splits(config)["train"],
                 deadline=Deadline(config.time_budget_minutes), ALLOW_CONFIG_CHANGE=args.allow_config_change)
    run_cells(SFT_CELLS + GRPO_CELLS if config.sft_steps else GRPO_CELLS, **names)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
