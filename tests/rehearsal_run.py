"""The `tpu` profile's code path on simulated devices, run by tests/test_rehearsal.py (issue 12).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 COURSE_RUN_DIR=R \
        python tests/rehearsal_run.py train [--kill-after-grpo-checkpoint 2]

`train` writes the rehearsal's configuration (the tpu profile with a tiny model that has Gemma 3
1B's head layout: 4 query heads, 1 KV head; lengths and sizes cut) into the run folder and runs
part 06 through `course_utils.training.main`, the course's own path: mesh, weights placed on it,
LoRA, SFT, GRPO, checkpoints. `--kill-after-grpo-checkpoint K` sends this process SIGKILL as
soon as GRPO's checkpoint K is on disk, as when a Kaggle session dies; `train` again resumes.

Not yet covered here (issue 12): generation, evaluation, exports and equality with a
1-device run on this mesh.

JAX must see the device count before it starts, so XLA_FLAGS is set by the caller.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's course_utils

from course_utils.config import TrainingConfig  # noqa: E402

GRPO_STEPS = 4


def rehearsal_config() -> TrainingConfig:
    """The tpu profile with what a CPU can run in seconds: the tiny Gemma 3 (4 query heads,
    1 KV head, like the 1B), float32 (so 1- and 8-device runs agree to float tolerance),
    synthetic data, a few steps with a checkpoint after each."""
    tpu = TrainingConfig.for_profile("tpu")
    return TrainingConfig.for_profile(
        "tpu", model="tiny", param_dtype="float32", data_source="synthetic", train_examples=32,
        val_examples=8, eval_examples=4, sft_steps=2, sft_batch_size=4, sft_max_length=192,
        max_steps=GRPO_STEPS, max_prompt_length=160, max_generation_length=12, cache_size=176, top_k=8,
        eval_batch_size=4, eval_samples_k=2, eval_sampled_examples=2, checkpoint_every=1,
        time_budget_minutes=None, global_batch_size=tpu.global_batch_size,
        mini_batch_size=tpu.mini_batch_size, micro_batch_size=tpu.micro_batch_size,
    )


def _kill_after(step: int) -> None:
    """SIGKILL this process once GRPO's checkpoint `step` is written (a real, unclean kill)."""
    import orbax.checkpoint as ocp

    save = ocp.CheckpointManager.save

    def save_then_die(self, at_step, *args, **kwargs):
        saved = save(self, at_step, *args, **kwargs)
        if saved and int(at_step) == step and "grpo" in str(self.directory):
            self.wait_until_finished()
            print(f"rehearsal: killing myself after GRPO checkpoint {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return saved

    ocp.CheckpointManager.save = save_then_die


def train(run: Path, kill_after: int | None) -> None:
    from course_utils import training

    run.mkdir(parents=True, exist_ok=True)
    if not (run / "config.json").exists():
        rehearsal_config().save(run / "config.json")
    if kill_after:
        _kill_after(kill_after)
    import jax

    from course_utils.model import model_mesh

    print(f"rehearsal: {len(jax.devices())} devices, mesh {tuple(model_mesh(TrainingConfig.load(run / 'config.json')).shape.values())}",
          flush=True)
    training.main(["--profile", "tpu", "--run-dir", str(run)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("train",))
    parser.add_argument("--kill-after-grpo-checkpoint", type=int, default=None)
    args = parser.parse_args(argv)
    run = Path(os.environ["COURSE_RUN_DIR"])
    train(run, args.kill_after_grpo_checkpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
