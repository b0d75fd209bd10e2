"""Helpers shared by the notebooks of the Gemma 3 GRPO + LoRA course (Tunix, JAX).

One flat module per job, named after the part that introduces it:

- part 01: `env` (machine, paths, secrets, mesh), `install` (pinned packages on Kaggle);
- part 02: `config` (every knob, the profiles);
- part 03: `data` (GSM8K and the offline generator, prompts), `rewards`;
- part 04: `model`, `tokenizer`, `lora`, `generate`, `memory`;
- part 05: `reward_analysis` (diagnose, print_breakdown);
- part 06: `training` (SFT + GRPO), `checkpoints`, `metrics`, `plots`;
- part 07: `evaluation`; part 08: `export`.

The tooling (the main job, the Kaggle job, notebook pairing, benchmarks) lives in the
repository's top-level `tools/` folder, not in this package.
"""

__version__ = "0.1.0"
