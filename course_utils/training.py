"""Training: SFT warm-start, then GRPO with curriculum and reward annealing (part 06).

Both stages run on Tunix: `PeftTrainer` for SFT, `RLCluster` + `GRPOLearner` for GRPO. Tunix
saves Orbax checkpoints of the LoRA parameters and the optimiser state every
`config.checkpoint_every` steps (keeping `config.keep_checkpoints`), restores the newest one when
the stage starts again, and skips the batches already trained, so re-running part 06 continues
where it stopped. Every checkpoint carries a JSON sidecar (step, stage, phase, config
fingerprint, metrics so far); per-step metrics go to `metrics_<stage>.jsonl` / `.csv` in the run
directory (and to TensorBoard, through Tunix). A time budget ends a stage cleanly, with a
checkpoint, before Kaggle's session limit.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from course_utils.config import TrainingConfig
from course_utils.filtering import mixed_group_fraction
from course_utils.tokenizer import END_OF_TURN, EOS_TOKENS

PHASES = ("easy", "medium", "hard")


# --- small pure helpers --------------------------------------------------------------------------


def checkpoint_dir(run_dir: str | Path, stage: str) -> Path:
    """Where a stage's Orbax checkpoints live: `checkpoints/sft`, `checkpoints/grpo/actor`
    (Tunix's RLCluster adds the role, `actor`, below the root it is given)."""
    if stage not in ("sft", "grpo"):
        raise ValueError(f"stage={stage!r} is unknown; use 'sft' or 'grpo'")
    root = Path(run_dir) / "checkpoints" / stage
    return root / "actor" if stage == "grpo" else root


def latest_stage_checkpoint(run_dir: str | Path, stage: str) -> Any:
    """The newest complete checkpoint of a stage in this run (a `CheckpointInfo`), or None."""
    from course_utils.checkpoints import latest_checkpoint

    return latest_checkpoint(checkpoint_dir(run_dir, stage))


def drop_untrained_checkpoints(run_dir: str | Path, stage: str) -> list[Path]:
    """Delete a stage's step-0 checkpoint, if any, and return what was deleted (part 06).

    A step-0 checkpoint holds no training of its own stage: Tunix 0.1.7 saves one when a
    trainer closes before its first step (a Kaggle session whose time budget ran out before
    GRPO started). Restored in the next session, a step-0 GRPO checkpoint would put the
    half-trained SFT weights of that session back over the finished SFT. The course no longer
    writes them (see `_install_sidecar`); this removes those an older version wrote.
    """
    import shutil

    untrained = checkpoint_dir(run_dir, stage) / "0"
    if not untrained.is_dir():
        return []
    shutil.rmtree(untrained)
    print(f"{stage}: removed {untrained}, a checkpoint saved before any {stage} step (it holds no training)")
    return [untrained]


def phase_at(step: int, max_steps: int, shares: tuple[float, float] = (1 / 3, 1 / 3)) -> str:
    """Curriculum phase of GRPO step `step` (0-based), easy → medium → hard: the first
    `shares[0]` of the run is easy, the next `shares[1]` medium, the rest hard (default: thirds)."""
    if max_steps <= 0:
        raise ValueError(f"max_steps={max_steps} must be positive")
    easy_end = math.ceil(round(shares[0] * max_steps, 9))
    medium_end = math.ceil(round((shares[0] + shares[1]) * max_steps, 9))
    step = max(0, step)
    return PHASES[0] if step < easy_end else PHASES[1] if step < medium_end else PHASES[2]


def curriculum_shares(config: TrainingConfig) -> tuple[float, float]:
    """The config's (easy, medium) shares of the GRPO run; hard gets the rest."""
    return config.curriculum_easy_share, config.curriculum_medium_share


def phase_of_step(step: int, config: TrainingConfig) -> str:
    """Curriculum phase of optimiser step `step` (1-based): the phase of the batch it learns from."""
    batches = grpo_batch_count(config)
    return phase_at((max(1, step) - 1) * batches // config.max_steps, batches, curriculum_shares(config))


def grpo_batch_count(config: TrainingConfig) -> int:
    """Global batches GRPO consumes: each gives (global / mini batch) × μ optimiser steps."""
    per_batch = (config.global_batch_size // config.mini_batch_size) * config.num_iterations
    return math.ceil(config.max_steps / per_batch)


def curriculum(examples: Sequence[Any], config: TrainingConfig) -> list[Any]:
    """The examples GRPO sees, in order: `grpo_batch_count × global_batch_size` of them.

    Batch b draws from the pool of its phase (`phase_at`), each pool shuffled with the config's
    seed and cycled when exhausted; a phase with no examples of its difficulty draws from all.
    The order is a pure function of (examples, config), which is what makes resume exact.
    """
    if not examples:
        raise ValueError("curriculum needs at least one training example; check load_splits(config)['train']")
    rng = random.Random(config.seed)
    pools: dict[str, list[Any]] = {}
    for phase in PHASES:
        pool = [e for e in examples if getattr(e, "difficulty", None) == phase] or list(examples)
        rng.shuffle(pool)
        pools[phase] = pool
    cursor = dict.fromkeys(PHASES, 0)
    order = []
    batches = grpo_batch_count(config)
    for batch in range(batches):
        phase = phase_at(batch, batches, curriculum_shares(config))
        pool = pools[phase]
        for _ in range(config.global_batch_size):
            order.append(pool[cursor[phase] % len(pool)])
            cursor[phase] += 1
    return order


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int) -> Callable[[Any], Any]:
    """Linear warm-up to `peak`, then cosine decay towards 0 (the official Tunix recipe), as a
    function of optax's update count (part 06).

    optax evaluates a schedule at the count of updates done so far, so the first update reads
    count 0. The schedule here is shifted by one: update k (1-based) runs at
    `peak × k / warmup_steps` during warm-up (never at 0) and the last update at a small
    positive rate. `update_learning_rate(schedule, k)` reads the rate of update k.
    """
    import optax

    warmup = max(0, min(warmup_steps, total_steps - 1))
    shifted = optax.schedules.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else peak, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1) + 1, end_value=0.0,
    )
    return lambda count: shifted(count + 1)


def update_learning_rate(schedule: Callable[[Any], Any], k: int) -> float:
    """The learning rate optax applies in update `k` (1-based) under `schedule` (part 06): the
    schedule read at count k − 1, the number of updates done before it. Metrics log this."""
    if k < 1:
        raise ValueError(f"update k={k} must be >= 1 (updates are counted from 1)")
    return float(schedule(k - 1))


def grpo_learning_rate(config: TrainingConfig) -> float:
    """GRPO's peak learning rate: `config.learning_rate`, or 0 for the control run `control="lr0"`
    (rollouts, rewards and updates all run; the weights cannot move)."""
    return 0.0 if config.control == "lr0" else config.learning_rate


def shuffle_within_groups(reward_fns: Sequence[Callable], group_size: int, seed: int) -> list[Callable]:
    """The control `control="shuffle"`: each reward function's outputs permuted within every
    group of G, by one permutation shared by all functions of a step (their sum is shuffled as a
    whole, so a reply is paid another reply's total). The update then sees rewards with no
    relation to its replies; the logged accuracy and mixed-group share stay the true ones."""
    import zlib

    def permutation(completions: Any) -> np.ndarray:
        text = "\x00".join(str(c) for c in completions)
        rng = np.random.default_rng([seed, zlib.crc32(text.encode("utf-8", "replace"))])
        groups = len(completions) // group_size
        return rng.permuted(np.tile(np.arange(group_size), (groups, 1)), axis=1)

    def wrap(fn: Callable) -> Callable:
        def shuffled(prompts: Any, completions: Any, answer: Any, **kwargs: Any) -> list[float]:
            values = np.asarray(fn(prompts, completions, answer, **kwargs), dtype=np.float64)
            grouped = values.reshape(-1, group_size)
            return np.take_along_axis(grouped, permutation(list(completions)), axis=1).ravel().tolist()

        shuffled.__name__ = shuffled.__qualname__ = fn.__name__
        if hasattr(fn, "last_breakdowns"):
            shuffled.last_breakdowns = fn.last_breakdowns  # type: ignore[attr-defined]
        return shuffled

    return [wrap(fn) for fn in reward_fns]


def make_optimizer(config: TrainingConfig, *, peak: float, total_steps: int, warmup_steps: int,
                   max_grad_norm: float) -> Any:
    """AdamW with warm-up + cosine decay, after global-norm gradient clipping."""
    import optax

    schedule = learning_rate_schedule(peak, total_steps, warmup_steps)
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2, weight_decay=config.weight_decay),
    )


class Deadline:
    """The time budget: `expired()` turns true `minutes` after creation (never, for None)."""

    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self._end = None if minutes is None else time.monotonic() + 60.0 * minutes

    def expired(self) -> bool:
        return self._end is not None and time.monotonic() >= self._end

    def remaining_minutes(self) -> float:
        return math.inf if self._end is None else max(0.0, (self._end - time.monotonic()) / 60.0)

    def reserve(self, minutes: float) -> "Deadline":
        """A deadline `minutes` before this one, for work that must leave time for what follows
        it inside the same budget (part 06 keeps the final evaluation's minutes out of training's)."""
        if minutes < 0:
            raise ValueError(f"minutes={minutes} must be zero or more")
        earlier = Deadline(None)
        if self._end is not None:
            earlier.minutes = max(0.0, self.minutes - minutes)
            earlier._end = self._end - 60.0 * minutes
        return earlier


EVAL_MARGIN = 1.25  # an evaluation's time varies with how long the replies are


def evaluation_minutes(config: TrainingConfig, run_dir: str | Path | None = None,
                       examples: int | None = None) -> float:
    """Minutes one evaluation of `examples` held-out problems takes, with a margin, so part 06
    can keep them inside the session's time budget (`Deadline.reserve`).

    Measured where possible: scaled from this run's saved "sft" (else "baseline") evaluation
    (its greedy + sampled seconds, `evaluation.evaluate_model`), which part 06 makes before
    training. Otherwise from the batch count and `config.ASSUMED_SECONDS["eval_batch"]`,
    an assumption for a TPU v5e-8 until a TPU run measures it.
    """
    from course_utils.evaluation import saved_result
    from course_utils.config import ASSUMED_SECONDS, GSM8K_TEST_SIZE

    n = examples or config.eval_examples or GSM8K_TEST_SIZE
    for name in ("sft", "baseline"):
        saved = saved_result(run_dir, name) if run_dir is not None else None
        if saved is None or not saved.rows:
            continue
        seconds = float(saved.settings.get("seconds_greedy") or 0.0) + float(saved.settings.get("seconds_sampled") or 0.0)
        if seconds > 0:
            return EVAL_MARGIN * seconds * n / len(saved.rows) / 60.0

    sampled = min(n, config.eval_sampled_examples or n) * config.eval_samples_k if config.eval_samples_k > 1 else 0
    batches = math.ceil(n / config.eval_batch_size) + math.ceil(sampled / config.eval_batch_size)
    return EVAL_MARGIN * batches * ASSUMED_SECONDS["eval_batch"] / 60.0


# --- metrics from Tunix into the course's JSONL -----------------------------------------------


# Tunix logs rollout-side metrics at the 0-based batch index and the trainer's at the 1-based
# update step: update s learns from the rollouts of batch s - 1, so those shift by one.
_GRPO_SOURCES = {"actor": 0, "completions": 1, "course": 1}
_SFT_SOURCES = {"": 0}
_RENAME = {
    "actor/loss": "policy_loss", "actor/kl": "kl", "actor/grad_norm": "grad_norm",
    "actor/pg_clipfrac": "clip_fraction", "completions/mean_length": "completion_length_mean",
    "completions/max_length": "completion_length_max", "/loss": "loss", "/grad_norm": "grad_norm",
}
_SKIP = {"actor/perplexity", "completions/min_length"}


class _StepRowsBackend:
    """A Tunix/metrax logging backend that assembles one metrics row per step for the JSONL.

    `sources` maps an event's prefix to its step offset; events from other prefixes (Tunix's
    duplicates, JAX and Orbax internals) are ignored. A row is written once two later steps
    have been seen (events of one step may arrive late), and the rest on `close`.
    """

    def __init__(self, logger: Any, sources: dict[str, int], extra: Callable[[int, float], dict]) -> None:
        self.logger, self.sources, self.extra = logger, sources, extra
        self.pending: dict[int, dict[str, float]] = {}
        self.arrived: dict[int, float] = {}

    def log_scalar(self, event: str, value: Any, **kwargs: Any) -> None:
        step = kwargs.get("step")
        prefix, _, rest = event.partition("/")
        mode, _, name = rest.partition("/")
        if step is None or mode != "train" or prefix not in self.sources or not name:
            return
        key = f"{prefix}/{name}"
        if key in _SKIP:
            return
        step = int(step) + self.sources[prefix]
        try:
            number = float(np.asarray(value).mean())
        except (TypeError, ValueError):
            return
        self.pending.setdefault(step, {})[_RENAME.get(key, name)] = number
        if self.sources[prefix] == 0:
            self.arrived.setdefault(step, time.perf_counter())
        for done in sorted(k for k in self.pending if k <= step - 2):
            self._write(done)

    def _write(self, step: int) -> None:
        row = self.pending.pop(step)
        if step >= 1 and step > (self.logger.last_step or 0):
            previous = self.arrived.get(step - 1)
            seconds = self.arrived[step] - previous if previous and step in self.arrived else math.nan
            row.update(self.extra(step, seconds))
            self.logger.log(row, step=step)

    def flush(self, step: int) -> None:
        """Write the rows of every step up to `step` now (a checkpoint of `step` is being saved)."""
        for done in sorted(k for k in self.pending if k <= step):
            self._write(done)

    def close(self) -> None:
        for step in sorted(self.pending):
            self._write(step)


def _flush_step_rows(trainer: Any, backend: _StepRowsBackend, cluster: Any = None) -> None:
    """Put the rows of every step the trainer has made on disk, before its checkpoint is saved.

    Tunix holds metrics back to overlap their I/O with the next step: the trainer logs update
    s's loss at update s + 1, and RLCluster logs batch b's rollout metrics when batch b + 1
    starts. A run killed right after checkpoint s would lose those rows, and the resumed run
    (which continues after s) would never write them. Here the trainer's held-back update is
    logged now (Tunix's `_write_train_metrics` then starts its overlap afresh), the cluster's
    buffered rollout metrics too, and the backend writes every row up to the checkpoint.
    Tunix 0.1.7 internals (`_prev_buffered_train_metrics`, `_buffered_train_metrics`); where a
    version lacks them, rows are written as before.
    """
    held = getattr(trainer, "_prev_buffered_train_metrics", None)
    if held is not None:
        held.step += 1  # as _write_train_metrics does: the update count after this update
        trainer._write_metrics(held)
        trainer._prev_buffered_train_metrics = None
    buffered = getattr(cluster, "_buffered_train_metrics", None)
    if buffered:
        for metrics in buffered:
            cluster._log_metrics(metrics)
        buffered.clear()
    backend.flush(int(trainer.train_steps))


def _logging_options(log_dir: Path, backend: _StepRowsBackend) -> Any:
    from tunix.sft import metrics_logger

    def tensorboard() -> Any:
        return metrics_logger.TensorboardBackend(log_dir=str(log_dir), flush_every_n_steps=1)

    return metrics_logger.MetricsLoggerOptions(
        log_dir=str(log_dir), flush_every_n_steps=1,
        backend_kwargs={"custom_backend": [tensorboard, lambda: backend]},
    )


def _checkpoint_options(config: TrainingConfig) -> Any:
    import orbax.checkpoint as ocp

    return ocp.CheckpointManagerOptions(
        save_interval_steps=config.checkpoint_every, max_to_keep=config.keep_checkpoints
    )


def _tokenizer_adapter(tokenizer: Any) -> Any:
    from tunix.generate import tokenizer_adapter

    if isinstance(tokenizer, tokenizer_adapter.TokenizerAdapter):
        return tokenizer
    return tokenizer_adapter.TokenizerAdapter(tokenizer)


@dataclasses.dataclass
class StageResult:
    """What a training stage did: its steps, where it stopped, and why."""

    stage: str
    start_step: int
    end_step: int
    max_steps: int
    seconds: float
    stopped_by_budget: bool
    checkpoint_dir: Path
    metrics_path: Path
    timings: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # seconds per call

    @property
    def finished(self) -> bool:
        return self.end_step >= self.max_steps

    def message(self) -> str:
        ran = self.end_step - self.start_step
        text = (f"{self.stage}: steps {self.start_step}→{self.end_step} of {self.max_steps} "
                f"({ran} this session, {self.seconds:.0f} s)")
        if self.stopped_by_budget and not self.finished:
            text += ("; the time budget ran out, a checkpoint is saved: run this part again "
                     "(or the next Kaggle session with this output attached) to continue")
        return text


def _install_sidecar(trainer: Any, stage: str, config: TrainingConfig, logger: Any,
                     phase_of: Callable[[int], str], backend: _StepRowsBackend | None = None,
                     cluster: Any = None) -> None:
    """Make every checkpoint the trainer saves carry the course's JSON sidecar, and find the
    metric rows of the steps it covers already on disk (`_flush_step_rows`, given `backend`).

    The sidecar rides in Orbax's custom metadata, so it is written atomically with the arrays.
    Tunix's RL trainer keeps its own `global_step` there: that is preserved. Tunix 0.1.7's final
    save (when training ends or the time budget stops it) passes no metadata at all, so that
    one is redone here with it, and never at step 0: a trainer closed before its first step
    (the time budget ran out first) has nothing of its own to save, and a step-0 checkpoint
    would be restored over the weights the next session brings (`drop_untrained_checkpoints`).
    """
    own = trainer.custom_checkpoint_metadata

    def metadata() -> dict[str, Any]:
        step = int(trainer.train_steps)
        # Tunix asks for the metadata at every update and saves at the interval's steps (and at
        # the first, when there is no checkpoint yet): flush the rows when it will save.
        saves = step % config.checkpoint_every == 0 or trainer.checkpoint_manager.latest_step() is None
        if backend is not None and step > 0 and saves:
            _flush_step_rows(trainer, backend, cluster)
        rows = logger.rows
        return {**own(), "course": {
            "stage": stage, "phase": phase_of(step), "profile": config.profile,
            "config_fingerprint": config.fingerprint(config.stage_fields(stage)), "config": config.to_dict(),
            "metrics_file": logger.path.name, "metrics_rows": len(rows),
            "last_metrics": rows[-1] if rows else None, "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
        }}

    def save_last() -> None:
        manager = trainer.checkpoint_manager
        last = manager.latest_step()
        if trainer.train_steps > 0 and (last is None or last < trainer.train_steps):
            if backend is not None:
                _flush_step_rows(trainer, backend, cluster)
            manager.save(trainer.train_steps, trainer.model, trainer.optimizer,
                         save_only_lora_params=trainer._lora_enabled, force=True,
                         custom_metadata=metadata())

    trainer.custom_checkpoint_metadata = metadata
    trainer._save_last_checkpoint = save_last


def _check_fingerprint(checkpoint_dir: Path, config: TrainingConfig, stage: str,
                       allow_config_change: bool) -> None:
    """Refuse to resume a stage whose settings changed since its last checkpoint, unless told to.

    Only the fields that shape the stage count (`TrainingConfig.stage_fields`): a new time
    budget or checkpoint interval in the next Kaggle session is fine.
    """
    from course_utils.checkpoints import ConfigMismatchError, latest_checkpoint

    info = latest_checkpoint(checkpoint_dir)
    fields = config.stage_fields(stage)
    if info is None or allow_config_change or info.fingerprint in (None, config.fingerprint(fields)):
        return
    saved = info.sidecar.get("config") or {}
    changed = [f"{k}: {saved.get(k)!r} → {getattr(config, k)!r}" for k in fields if saved.get(k) != getattr(config, k)]
    raise ConfigMismatchError(
        f"{info} was trained with other {stage} settings ({'; '.join(changed) or 'unknown fields'}). "
        f"Go back to those settings, start a fresh run (another COURSE_RUN_DIR, or delete "
        f"{checkpoint_dir}), or pass allow_config_change=True to continue with the new ones."
    )


# --- stage 1: SFT warm-start ---------------------------------------------------------------


def sft_example_tokens(example: Any, tokenizer: Any, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, loss mask) for one SFT example: BOS + prompt + course-format answer + <end_of_turn>.

    Only the answer tokens carry loss (the prompt is masked out); the answer ends with
    `<end_of_turn>` so the model learns to stop. Truncated from the right to `max_length`.
    """
    from course_utils.data import build_prompt, format_solution

    tok = _tokenizer_adapter(tokenizer)
    prompt = [tok.bos_id()] + list(tok.encode(build_prompt(example.question)))
    answer = list(tok.encode(format_solution(example) + END_OF_TURN))
    tokens = (prompt + answer)[:max_length]
    mask = ([0] * len(prompt) + [1] * len(answer))[:max_length]
    return np.array(tokens, np.int32), np.array(mask, np.int32)


def sft_batches(examples: Sequence[Any], tokenizer: Any, config: TrainingConfig) -> Iterator[Any]:
    """Padded SFT batches in a fixed, seeded order (cycling), `config.sft_steps` of them."""
    from tunix.sft import peft_trainer

    if not examples:
        raise ValueError("SFT needs training examples; load_splits(config)['train'] is empty")
    pad = _tokenizer_adapter(tokenizer).pad_id()
    size, length = config.sft_batch_size, config.sft_max_length
    # A cut-off target would teach the model never to close its answer: leave those out.
    encoded = [sft_example_tokens(e, tokenizer, length + 1) for e in examples]
    fitting = [pair for pair in encoded if len(pair[0]) <= length]
    if not fitting:
        raise ValueError(f"no SFT example fits sft_max_length={length} tokens; raise it in the config")
    if len(fitting) < len(encoded):
        print(f"sft: left out {len(encoded) - len(fitting)} of {len(encoded)} examples longer than {length} tokens")
    random.Random(config.seed + 1).shuffle(fitting)
    for step in range(config.sft_steps):
        tokens = np.full((size, length), pad, np.int32)
        mask = np.zeros((size, length), np.int32)
        for row in range(size):
            t, m = fitting[(step * size + row) % len(fitting)]
            tokens[row, : len(t)], mask[row, : len(m)] = t, m
        yield peft_trainer.TrainingInput(input_tokens=tokens, input_mask=mask)


def train_sft(config: TrainingConfig, model: Any, tokenizer: Any, examples: Sequence[Any],
              run_dir: str | Path, *, deadline: Deadline | None = None,
              allow_config_change: bool = False) -> StageResult:
    """LoRA SFT on course-format worked solutions with Tunix's PeftTrainer (part 06, stage 1).

    `deadline` is the session's time budget, shared with GRPO (default: a new one from the
    config). Re-running it continues from the newest SFT checkpoint.
    """
    from tunix.sft import peft_trainer

    from course_utils.metrics import MetricsLogger

    run_dir = Path(run_dir)
    directory = checkpoint_dir(run_dir, "sft")
    if config.sft_steps == 0:
        print("sft: sft_steps=0, skipping the warm-start")
        return StageResult("sft", 0, 0, 0, 0.0, False, directory, run_dir / "metrics_sft.jsonl")
    drop_untrained_checkpoints(run_dir, "sft")
    _check_fingerprint(directory, config, "sft", allow_config_change)
    logger = MetricsLogger(run_dir, "sft")
    lr = learning_rate_schedule(config.sft_learning_rate, config.sft_steps, max(1, config.sft_steps // 10))
    backend = _StepRowsBackend(logger, _SFT_SOURCES, lambda step, seconds: {
        "stage": "sft", "learning_rate": update_learning_rate(lr, step), "seconds_per_step": seconds})
    training_config = peft_trainer.TrainingConfig(
        eval_every_n_steps=10**9, max_steps=config.sft_steps,
        checkpoint_root_directory=str(directory),
        checkpointing_options=_checkpoint_options(config),
        metrics_logging_options=_logging_options(run_dir / "tensorboard" / "sft", backend),
        pbar_description="SFT",
    )
    trainer = peft_trainer.PeftTrainer(model, sft_optimizer(config), training_config).with_gen_model_input_fn(
        sft_model_inputs(_tokenizer_adapter(tokenizer).pad_id()))
    _install_sidecar(trainer, "sft", config, logger, lambda step: "sft", backend)
    start = trainer.train_steps
    logger.resume(start)
    started = backend.arrived[start] = time.perf_counter()
    deadline = deadline or Deadline(config.time_budget_minutes)
    if start < config.sft_steps:
        trainer.train(_until(sft_batches(examples, tokenizer, config), deadline, start))
    else:
        trainer.close()
    return StageResult("sft", start, trainer.train_steps, config.sft_steps, time.perf_counter() - started,
                       deadline.expired(), directory, logger.path)


def sft_optimizer(config: TrainingConfig) -> Any:
    """SFT's optimiser (part 06, stage 1): AdamW at `sft_learning_rate`, 10 % warm-up, clipping at 1."""
    return make_optimizer(config, peak=config.sft_learning_rate, total_steps=config.sft_steps,
                          warmup_steps=max(1, config.sft_steps // 10), max_grad_norm=1.0)


def sft_model_inputs(pad: int) -> Callable[[Any], dict[str, Any]]:
    """PeftTrainer's `gen_model_input_fn` for SFT: positions and a causal mask that skip padding
    (the loss mask `input_mask` stays the answer-only mask)."""
    from tunix.sft import utils as sft_utils

    def model_inputs(batch: Any) -> dict[str, Any]:
        not_pad = batch.input_tokens != pad
        return {"input_tokens": batch.input_tokens, "input_mask": batch.input_mask,
                "positions": sft_utils.build_positions_from_mask(not_pad),
                "attention_mask": sft_utils.make_causal_attn_mask(not_pad)}

    return model_inputs


def grpo_optimizer(config: TrainingConfig) -> Any:
    """GRPO's optimiser (part 06, stage 2): AdamW at `grpo_learning_rate(config)` with the config's
    warm-up, cosine decay and `max_grad_norm` clipping."""
    return make_optimizer(config, peak=grpo_learning_rate(config), total_steps=config.max_steps,
                          warmup_steps=config.warmup_steps, max_grad_norm=config.max_grad_norm)


def grpo_algo_config(config: TrainingConfig) -> Any:
    """Tunix's GRPOConfig for `config` (loss function, G, μ, β, ε, KL mode, aggregation, advantages);
    its temperature is the rollout's, as GRPOLearner sets it."""
    from course_utils.policy_loss import grpo_config

    algo = grpo_config(config.grpo_loss_fn, num_generations=config.num_generations,
                       num_iterations=config.num_iterations, beta=config.beta, epsilon=config.epsilon,
                       kl_loss_mode=config.kl_loss_mode, loss_agg_mode=config.loss_agg_mode,
                       advantage_estimator=config.advantage_estimator)
    algo.temperature = config.temperature
    return algo


def _until(batches: Iterator[Any], deadline: Deadline, skip: int) -> Iterator[Any]:
    """Pass batches through until the deadline. The `skip` already trained ones and one new
    batch always pass, so every session makes progress."""
    for index, batch in enumerate(batches):
        if index > skip and deadline.expired():
            print(f"time budget of {deadline.minutes} min reached: saving and stopping cleanly")
            return
        yield batch


# --- stage 2: GRPO ---------------------------------------------------------------------------


GRPO_PHASES = {"rollout": "generate", "reference": "get_ref_per_token_logps",
               "old_policy": "get_old_per_token_logps", "update": "update_actor"}


def _time_phases(cluster: Any) -> dict[str, list[float]]:
    """Time each call of the cluster's rollout, reference log-probs and actor update."""
    timings: dict[str, list[float]] = {name: [] for name in GRPO_PHASES}

    def timed(name: str, method: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                timings[name].append(time.perf_counter() - began)
        return wrapper

    for name, attribute in GRPO_PHASES.items():
        setattr(cluster, attribute, timed(name, getattr(cluster, attribute)))
    return timings


def end_of_turn_id(tokenizer: Any) -> int:
    """The id of Gemma's ``<end_of_turn>`` in `tokenizer` (106 in Gemma 3's vocabulary)."""
    ids = list(_tokenizer_adapter(tokenizer).encode(END_OF_TURN))
    if len(ids) != 1:
        raise ValueError(f"the tokenizer encodes {END_OF_TURN} as {ids}, not one token: it is not Gemma's")
    return int(ids[0])


def completions_with_stop(tokens: Sequence[np.ndarray], max_tokens: int, stop_id: int) -> list[np.ndarray]:
    """Completion tokens with the stop token put back on every reply that stopped by itself
    (part 06, `config.learn_to_stop`).

    Tunix's rollout cuts each completion before its end token, so the loss never sees the
    decision to stop and GRPO cannot reinforce it. A reply shorter than `max_tokens` ended on
    an end token: `stop_id` is appended, and the stop gets the reply's advantage like any other
    token. A reply that ran to the limit never stopped and is left as it is.
    """
    return [np.append(np.asarray(t), np.asarray(stop_id, np.asarray(t).dtype)) if len(t) < max_tokens
            else np.asarray(t) for t in tokens]


def _learn_to_stop(cluster: Any, config: TrainingConfig, stop_id: int) -> None:
    """Make the cluster's rollout return completions that keep their stop token."""
    generate = cluster.generate

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        output = generate(*args, **kwargs)
        output.tokens = completions_with_stop(output.tokens, config.max_generation_length, stop_id)
        return output

    cluster.generate = wrapper


def reward_step(train_steps: int, config: TrainingConfig) -> float:
    """The GRPO step, 0 … max_steps − 1, whose rollouts are being scored when the actor has
    made `train_steps` updates (part 06): the annealed reward weights read it.

    One batch of rollouts feeds (global / mini batch) × μ updates, so batch b is step
    b × (max_steps − 1) / (batches − 1): the first batch pays the start weights, the last one
    exactly the end weights, whatever the batch sizes.
    """
    batches = grpo_batch_count(config)
    per_batch = (config.global_batch_size // config.mini_batch_size) * config.num_iterations
    batch = min(batches - 1, max(0, int(train_steps) // per_batch))
    return float(config.max_steps - 1) if batches == 1 else batch * (config.max_steps - 1) / (batches - 1)


def make_reference(base: Any, actor: Any, config: TrainingConfig, mesh: Any = None) -> Any:
    """GRPO's reference model π_ref, frozen, sharing the base weights with the actor.

    "sft" (default): a second LoRA wrapper of the base holding a copy of the actor's current
    LoRA weights — call it after SFT, so the KL term anchors GRPO to the policy it starts
    from (as DeepSeek-R1 does). "base": the untouched base model, which the KL term then pulls
    back towards (the official Tunix notebook's choice, where there is no SFT stage).
    None when β = 0: without a KL term Tunix computes no reference log-probabilities, so no
    reference copy (and no reference forward pass) is needed.
    """
    if config.beta == 0:
        return None
    if config.grpo_reference == "base" or config.sft_steps == 0:
        return base
    from flax import nnx

    from course_utils.lora import apply_lora, lora_state

    reference = apply_lora(base, config, mesh)
    nnx.update(reference, lora_state(actor))
    return reference


def prompts_that_fit(examples: Sequence[Any], tokenizer: Any, config: TrainingConfig) -> list[Any]:
    """The examples whose prompt fits `max_prompt_length` tokens; says how many it dropped.

    A longer prompt would make Tunix's sampler round the prompt up past the KV cache.
    """
    from course_utils.data import build_prompt
    from course_utils.generate import prompt_token_counts

    counts = prompt_token_counts(_tokenizer_adapter(tokenizer), [build_prompt(e.question) for e in examples])
    kept = [e for e, n in zip(examples, counts) if n <= config.max_prompt_length]
    if not kept:
        raise ValueError(
            f"no prompt fits max_prompt_length={config.max_prompt_length} tokens; raise "
            "max_prompt_length (and cache_size) in the config"
        )
    if len(kept) < len(examples):
        print(f"prompts: dropped {len(examples) - len(kept)} of {len(examples)} longer than "
              f"{config.max_prompt_length} tokens")
    return kept


def grpo_prompts(config: TrainingConfig, actor: Any, tokenizer: Any, examples: Sequence[Any],
                 run_dir: str | Path, *, model_config: Any = None,
                 pass_rates_dir: str | Path | None = None) -> list[Any]:
    """The prompts GRPO trains on (part 06): every example whose prompt fits, or, with
    `config.filter_prompts`, the candidates the actor (the SFT policy) solves sometimes.

    Filtering samples `filter_samples_k` replies to each of `filter_candidates` candidates (of
    `filter_difficulties`) at the rollout temperature — cached in `pass_rates_dir` (default
    ``<run_dir>/pass_rates``), so a resumed run reads them instead — and keeps those with
    `filter_pass_rate_min ≤ p̂ ≤ filter_pass_rate_max`.
    """
    from course_utils import filtering

    fitting = prompts_that_fit(examples, tokenizer, config)
    if not config.filter_prompts:
        return fitting
    sft = latest_stage_checkpoint(run_dir, "sft") if config.sft_steps else None
    rates = filtering.measure_pass_rates(
        actor, tokenizer, model_config if model_config is not None else actor.config,
        filtering.candidate_prompts(fitting, config), config,
        pass_rates_dir or Path(run_dir) / filtering.PASS_RATES_DIR, name="train-before",
        checkpoint=None if sft is None else f"sft step {sft.step}")
    kept = filtering.select_by_pass_rate(rates, config)
    stats = filtering.summary(rates, config)
    print(f"filter: {stats['selected']} of {stats['prompts']} prompts solved sometimes "
          f"({stats['never']} never, {stats['always']} always; mean p̂ {stats['mean_pass_rate']:.2f}, k={stats['k']})")
    if not kept:
        raise ValueError(
            f"no candidate prompt has a pass rate in [{config.filter_pass_rate_min}, {config.filter_pass_rate_max}] "
            f"({stats['never']} never solved, {stats['always']} always): widen the bounds, raise "
            "filter_candidates or filter_samples_k, or choose other filter_difficulties"
        )
    return filtering.examples_of(kept, fitting)


def grpo_batches(order: Sequence[Any], config: TrainingConfig, *, rollout_config: Any = None,
                 deadline: Deadline | None = None, skip: int = 0) -> Iterator[dict[str, Any]]:
    """GRPO's input batches (Tunix wants dicts whose `prompts` are plain strings).

    Batch i also sets the rollout's sampling seed to a key derived from (seed, i): without it
    every step would draw the same completions (Tunix uses PRNGKey(0) when seed is None).
    """
    import jax

    from course_utils.data import build_prompt

    size = config.global_batch_size
    for index in range(len(order) // size):
        if index > skip and deadline is not None and deadline.expired():
            print(f"time budget of {deadline.minutes} min reached: saving and stopping cleanly")
            return
        if rollout_config is not None:
            rollout_config.seed = jax.random.PRNGKey(config.seed * 1_000_003 + index)
        chunk = order[index * size:(index + 1) * size]
        # numpy arrays, as grain's .batch() makes: Tunix repeats every field G times with
        # jax.tree.map(np.repeat, ...), which would split a Python list into its strings.
        yield {
            "prompts": np.array([build_prompt(e.question) for e in chunk]),
            "answer": np.array([e.answer for e in chunk]),
            "question": np.array([e.question for e in chunk]),
            "difficulty": np.array([e.difficulty for e in chunk]),
            "batch_index": np.full(len(chunk), index),
        }


def show_on_progress_bar(trainer: Any, values: dict[str, float]) -> None:
    """Show `values` (this step's reward and accuracy) on Tunix's GRPO progress bar (part 06).

    Tunix 0.1.7's bar shows only the actor's loss, perplexity and KL, averaged over the run; the
    course adds the rollout's current reward beside them, next to tqdm's ETA. The bar is the
    trainer's `_pbar` (Tunix has no public hook for it): where a Tunix version has none, nothing
    is shown and nothing fails.
    """
    metrics = getattr(getattr(trainer, "_pbar", None), "metrics", None)
    if isinstance(metrics, dict):
        for name, value in values.items():
            metrics[f"rollout_train_{name}"] = round(float(value), 3)  # Tunix keeps "<prefix>_train_<name>" keys


def grpo_step_metrics(config: TrainingConfig, tokenizer: Any, reward_fns: Sequence[Callable],
                      show: Callable[[dict[str, float]], None] | None = None) -> Callable[..., dict]:
    """A Tunix metric function: the course's per-step numbers beyond what Tunix logs itself.

    Reward mean/std in total and per component (the breakdowns the reward functions just paid,
    `reward_fns[0].last_breakdowns()`), the share of groups whose G rewards all tie (zero
    advantage: no learning signal), the share of groups whose correctness is mixed
    (`mixed_group_frac`: the correctness signal), rollout accuracy and format rate, truncation
    rate, reward weights, batch index. `show`, if
    given, receives the step's reward (and accuracy) for the progress bar.
    """
    from course_utils.evaluation import is_truncated, token_counts

    tok = _tokenizer_adapter(tokenizer)

    def metrics(prompts: list[str], completions: list[str], rewards: Any, advantages: Any,
                **kwargs: Any) -> dict[str, tuple[float, Callable]]:
        grouped = np.asarray(rewards, dtype=np.float64).reshape(-1, config.num_generations)
        out: dict[str, tuple[float, Callable]] = {
            "course/reward_mean": (float(grouped.mean()), np.mean),
            "course/reward_std": (float(grouped.std()), np.mean),
            "course/zero_advantage_frac": (float(np.mean(np.ptp(grouped, axis=1) < 1e-9)), np.mean),
        }
        limit = config.max_generation_length
        lengths = token_counts(tok, completions, limit)
        out["course/truncation_rate"] = (
            float(np.mean([is_truncated(c, n, limit) for c, n in zip(completions, lengths)])), np.mean)
        last = getattr(reward_fns[0], "last_breakdowns", None) if reward_fns else None
        breakdowns = last() if last is not None else []
        parts: dict[str, list[float]] = {}
        for breakdown in breakdowns:
            for name, value in breakdown.components.items():
                parts.setdefault(name, []).append(float(value))
        for name, values in parts.items():
            out[f"course/reward_{name}_mean"] = (float(np.mean(values)), np.mean)
            out[f"course/reward_{name}_std"] = (float(np.std(values)), np.mean)
        if breakdowns:
            for name, value in breakdowns[0].weights.items():
                out[f"course/weight_{name}"] = (float(value), np.mean)
            correct = [b.correct for b in breakdowns]
            out["course/accuracy"] = (float(np.mean(correct)), np.mean)
            out["course/format_rate"] = (float(np.mean([b.components["format"] >= 1.0 for b in breakdowns])), np.mean)
            if len(correct) % config.num_generations == 0:
                out["course/mixed_group_frac"] = (mixed_group_fraction(correct, config.num_generations), np.mean)
        if "batch_index" in kwargs:
            out["course/batch_index"] = (float(np.min(kwargs["batch_index"])), np.min)
        if show is not None:
            show({"reward": out["course/reward_mean"][0],
                  **({"accuracy": out["course/accuracy"][0]} if "course/accuracy" in out else {})})
        return out

    return metrics


def train_grpo(config: TrainingConfig, actor: Any, reference: Any, tokenizer: Any,
               examples: Sequence[Any], run_dir: str | Path, mesh: Any, *,
               deadline: Deadline | None = None, allow_config_change: bool = False,
               model_config: Any = None, pass_rates_dir: str | Path | None = None,
               reward_fns: Sequence[Callable[..., list[float]]] | None = None) -> StageResult:
    """GRPO with Tunix's RLCluster + GRPOLearner (part 06, stage 2).

    `actor` is the LoRA model (after SFT), `reference` the frozen model the KL term anchors to
    (None when β = 0); `config.grpo_loss_fn` picks the policy loss (course_utils.policy_loss).
    Rewards are the course's composite reward, annealed per step when the config says so, or
    `reward_fns` (Tunix reward functions, ``fn(prompts, completions, answer, **kwargs)``) when
    given. The loss aggregation and advantage estimator are the config's; with
    `config.learn_to_stop` the stop token of replies that ended is part of their completion.
    The prompts are `grpo_prompts`: with `config.filter_prompts`, those the actor solves
    sometimes (pass rates cached in `pass_rates_dir`, default ``<run_dir>/pass_rates``).
    `config.control` turns the run into a control ("lr0", "shuffle") through the same code.
    """
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo.grpo_learner import GRPOLearner
    from tunix.rl.rollout import base_rollout

    from course_utils.metrics import MetricsLogger
    from course_utils.rewards import make_reward_fns

    run_dir = Path(run_dir)
    directory = checkpoint_dir(run_dir, "grpo")
    drop_untrained_checkpoints(run_dir, "grpo")
    _check_fingerprint(directory, config, "grpo", allow_config_change)
    if deadline is not None and deadline.expired():  # nothing to build: the next session starts GRPO
        done = latest_stage_checkpoint(run_dir, "grpo")
        step = done.step if done is not None else 0
        print("grpo: the time budget ran out before GRPO started; run this part again "
              "(or the next Kaggle session with this output attached) to continue")
        return StageResult("grpo", step, step, config.max_steps, 0.0, True, directory, run_dir / "metrics_grpo.jsonl")
    prompts = grpo_prompts(config, actor, tokenizer, examples, run_dir, model_config=model_config,
                           pass_rates_dir=pass_rates_dir)
    logger = MetricsLogger(run_dir, "grpo")
    peak = grpo_learning_rate(config)
    lr = learning_rate_schedule(peak, config.max_steps, config.warmup_steps)
    backend = _StepRowsBackend(logger, _GRPO_SOURCES, lambda step, seconds: {
        "stage": "grpo", "phase": phase_of_step(step, config), "learning_rate": update_learning_rate(lr, step),
        "seconds_per_step": seconds})
    rollout_config = base_rollout.RolloutConfig(
        max_tokens_to_generate=config.max_generation_length, max_prompt_length=config.max_prompt_length,
        kv_cache_size=config.cache_size, temperature=config.temperature, top_p=config.top_p,
        top_k=config.top_k, eos_tokens=list(EOS_TOKENS),
    )
    training_config = rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=grpo_optimizer(config),
        eval_every_n_steps=10**9, max_steps=config.max_steps,
        mini_batch_size=config.mini_batch_size, train_micro_batch_size=config.micro_batch_size,
        # sample and score a whole mini-batch at once; accumulate gradients micro-batch by micro-batch
        rollout_micro_batch_size=config.mini_batch_size, compute_logps_micro_batch_size=config.mini_batch_size,
        checkpoint_root_directory=str(directory.parent), checkpointing_options=_checkpoint_options(config),
        metrics_logging_options=_logging_options(run_dir / "tensorboard" / "grpo", backend),
        pbar_description="GRPO",
    )
    roles = rl_cluster_lib.Role
    cluster = rl_cluster_lib.RLCluster(
        actor=actor, reference=reference, tokenizer=tokenizer,
        cluster_config=rl_cluster_lib.ClusterConfig(
            role_to_mesh={roles.ACTOR: mesh, roles.REFERENCE: mesh, roles.ROLLOUT: mesh},
            rollout_engine="vanilla", offload_to_cpu=False,
            training_config=training_config, rollout_config=rollout_config,
        ),
    )
    if config.learn_to_stop:
        _learn_to_stop(cluster, config, end_of_turn_id(tokenizer))
    timings = _time_phases(cluster)
    if reward_fns is None:  # the annealed weights follow the step being rolled out
        reward_fns = make_reward_fns(config, step_fn=lambda: reward_step(cluster.actor_trainer.train_steps, config))
    reward_fns = list(reward_fns)
    if config.control == "shuffle":
        reward_fns = shuffle_within_groups(reward_fns, config.num_generations, config.seed)
    learner = GRPOLearner(
        rl_cluster=cluster,
        algo_config=grpo_algo_config(config),
        reward_fns=reward_fns,
        metric_fns=[grpo_step_metrics(config, tokenizer, reward_fns,
                                      show=lambda values: show_on_progress_bar(cluster.actor_trainer, values))],
    )
    trainer = cluster.actor_trainer
    _install_sidecar(trainer, "grpo", config, logger, lambda step: phase_of_step(step, config), backend, cluster)
    start = int(trainer.train_steps)
    per_batch = config.max_steps / grpo_batch_count(config)
    cluster.global_steps = int(start // per_batch)  # batches done (Tunix 0.1.7's last save omits it)
    logger.resume(start)
    order = curriculum(prompts, config)
    deadline = deadline or Deadline(config.time_budget_minutes)
    started = time.perf_counter()
    backend.arrived[start] = started
    if start < config.max_steps and not deadline.expired():
        learner.train(grpo_batches(order, config, rollout_config=rollout_config, deadline=deadline,
                                   skip=int(start // per_batch)))
    else:
        cluster.close()
    end = int(trainer.train_steps)
    return StageResult("grpo", start, end, config.max_steps, time.perf_counter() - started,
                       deadline.expired(), directory, logger.path, timings)


# --- the whole of part 06 from the command line -------------------------------------------------


def run_config(run_dir: str | Path | None, profile: str | None) -> Any:
    """The configuration `main` trains with: `<run_dir>/config.json` when it exists, else the
    profile's (part 02's saved one, or fresh)."""
    from course_utils.config import CONFIG_FILE, load_run_config

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
    """`python -m course_utils.training [--profile P] [--run-dir D]`: both stages, resumable."""
    import argparse

    import jax

    from course_utils.data import load_splits
    from course_utils.env import check_devices, run_dir as default_run_dir
    from course_utils.lora import apply_lora
    from course_utils.model import load_model, model_mesh

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
    train = load_splits(config)["train"]
    deadline = Deadline(config.time_budget_minutes)  # one budget for the whole session
    print(train_sft(config, actor, loaded.tokenizer, train, run, deadline=deadline,
                    allow_config_change=args.allow_config_change).message())
    reference = make_reference(loaded.model, actor, config, mesh)
    result = train_grpo(config, actor, reference, loaded.tokenizer, train, run, mesh, deadline=deadline,
                        allow_config_change=args.allow_config_change, model_config=loaded.model_config)
    print(result.message())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
