"""Training's plumbing: curriculum, batches, time budget, sidecars and resume (part 06).

Part 06 builds every training object in its cells and calls the helpers here for the rest.
Those cells are the one source: `python -m course_utils.training` and `train_sft` /
`train_grpo` (the tests', benchmarks' and proof's path to part 06) run the same cells of
notebooks/06_training.py (`run_cells`), picked by their tag, with their inputs given by name.
Re-running a stage continues from its newest checkpoint, skipping the batches already trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import re
import shutil
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from tunix.generate import tokenizer_adapter
from tunix.sft import peft_trainer
from tunix.sft import utils as sft_utils

from course_utils import filtering
from course_utils.checkpoints import ConfigMismatchError, checkpoint_dir, latest_checkpoint
from course_utils.config import ASSUMED_SECONDS, CONFIG_FILE, GSM8K_TEST_SIZE, TrainingConfig, load_run_config
from course_utils.data import build_prompt, format_solution, load_splits
from course_utils.env import run_dir as default_run_dir
from course_utils.evaluation import is_truncated, saved_result, token_counts
from course_utils.filtering import mixed_group_fraction
from course_utils.generate import prompt_token_counts
from course_utils.lora import apply_lora, lora_state
from course_utils.model import load_model, model_mesh
from course_utils.tokenizer import END_OF_TURN

PHASES = ("easy", "medium", "hard")
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "06_training.py"
SFT_CELLS = ("sft_optimizer", "sft_trainer", "sft")
GRPO_CELLS = ("reference", "prompts", "grpo_config", "rollout_config", "grpo_optimizer", "rl_training_config",
              "rl_cluster", "reward_fns", "learner", "grpo")


# --- the notebook's cells as the one source ------------------------------------------------------


def notebook_cells(path: Path = NOTEBOOK) -> dict[str, str]:
    """The code cells of a jupytext percent notebook that carry a tag, by their first tag."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the training cells live in part 06's notebook; run from a "
                                "checkout of the course repository")
    cells = {}
    for block in re.split(r"^# %%", path.read_text(), flags=re.M)[1:]:
        header, _, body = block.partition("\n")
        tags = re.search(r'tags=\["([^"]+)"', header)
        if tags and "[markdown]" not in header:
            cells[tags.group(1)] = body
    return cells


def run_cells(tags: Sequence[str], **names: Any) -> dict[str, Any]:
    """Run part 06's cells with these tags, in the notebook's order, with `names` defined;
    returns the namespace they leave (each cell's objects under the names the notebook uses)."""
    cells = notebook_cells()
    missing = [t for t in tags if t not in cells]
    if missing:
        raise KeyError(f"{NOTEBOOK.name} has no cell tagged {missing}")
    namespace = dict(names)
    for tag in (t for t in cells if t in tags):
        exec(compile(cells[tag], f"{NOTEBOOK.name}[{tag}]", "exec"), namespace)
    return namespace


# --- checkpoints and resume ----------------------------------------------------------------------


def latest_stage_checkpoint(run_dir: str | Path, stage: str) -> Any:
    """The newest complete checkpoint of a stage in this run (a `CheckpointInfo`), or None."""
    return latest_checkpoint(checkpoint_dir(run_dir, stage))


def drop_untrained_checkpoints(run_dir: str | Path, stage: str) -> list[Path]:
    """Delete a stage's step-0 checkpoint, if any, and return what was deleted (part 06).

    Tunix 0.1.7 saves one when a trainer closes before its first step; restored in the next
    session, a step-0 GRPO checkpoint would put half-trained SFT weights back over the finished
    SFT. The course no longer writes them (`install_sidecar`); this removes older ones.
    """
    untrained = checkpoint_dir(run_dir, stage) / "0"
    if not untrained.is_dir():
        return []
    shutil.rmtree(untrained)
    print(f"{stage}: removed {untrained}, a checkpoint saved before any {stage} step (it holds no training)")
    return [untrained]


def prepare_stage(run_dir: str | Path, stage: str, config: TrainingConfig, allow_config_change: bool = False) -> None:
    """Before a trainer is built (it restores the newest checkpoint): drop a step-0 checkpoint,
    and refuse to resume a stage whose settings changed since its last checkpoint unless told to.

    Only the fields that shape the stage count (`TrainingConfig.stage_fields`): a new time
    budget or checkpoint interval in the next Kaggle session is fine.
    """
    drop_untrained_checkpoints(run_dir, stage)
    info = latest_stage_checkpoint(run_dir, stage)
    fields = config.stage_fields(stage)
    if info is None or allow_config_change or info.fingerprint in (None, config.fingerprint(fields)):
        return
    saved = info.sidecar.get("config") or {}
    changed = [f"{k}: {saved.get(k)!r} → {getattr(config, k)!r}" for k in fields if saved.get(k) != getattr(config, k)]
    raise ConfigMismatchError(
        f"{info} was trained with other {stage} settings ({'; '.join(changed) or 'unknown fields'}). "
        f"Go back to those settings, start a fresh run (another COURSE_RUN_DIR, or delete "
        f"{info.path.parent}), or pass allow_config_change=True to continue with the new ones."
    )


def _flush_step_rows(trainer: Any, metrics: Any, cluster: Any = None) -> None:
    """Put the rows of every step the trainer has made on disk, before its checkpoint is saved.

    Tunix logs update s's loss at update s + 1 and batch b's rollout metrics when batch b + 1
    starts: a kill right after checkpoint s would lose those rows for good. They are logged now
    (Tunix 0.1.7 internals; where a version lacks them, rows are written as before).
    """
    held = getattr(trainer, "_prev_buffered_train_metrics", None)
    if held is not None:
        held.step += 1  # as _write_train_metrics does: the update count after this update
        trainer._write_metrics(held)
        trainer._prev_buffered_train_metrics = None
    buffered = getattr(cluster, "_buffered_train_metrics", None)
    if buffered:
        for item in buffered:
            cluster._log_metrics(item)
        buffered.clear()
    metrics.flush(int(trainer.train_steps))


def install_sidecar(trainer: Any, stage: str, config: TrainingConfig, metrics: Any, cluster: Any = None) -> None:
    """Make every checkpoint the trainer saves carry the course's sidecar (in Orbax's custom
    metadata under "course", next to Tunix's `global_step`), with the metric rows of the steps
    it covers already on disk. Tunix 0.1.7's final save passes no metadata: it is redone here
    with it, and never at step 0 (a trainer closed before its first step saved nothing).
    """
    own = trainer.custom_checkpoint_metadata

    def metadata() -> dict[str, Any]:
        step = int(trainer.train_steps)
        # Tunix asks for the metadata at every update and saves at the interval's steps (and at
        # the first, when there is no checkpoint yet): flush the rows when it will save.
        if step > 0 and (step % config.checkpoint_every == 0 or trainer.checkpoint_manager.latest_step() is None):
            _flush_step_rows(trainer, metrics, cluster)
        return {**own(), "course": {
            "stage": stage, "phase": phase_of_step(step, config) if stage == "grpo" else stage,
            "profile": config.profile, "config_fingerprint": config.fingerprint(config.stage_fields(stage)),
            "config": config.to_dict(), "metrics_file": metrics.path.name, "metrics_rows": len(metrics.rows),
            "last_metrics": metrics.rows[-1] if metrics.rows else None, "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
        }}

    def save_last() -> None:
        manager, step = trainer.checkpoint_manager, int(trainer.train_steps)
        if step > 0 and (manager.latest_step() is None or manager.latest_step() < step):
            _flush_step_rows(trainer, metrics, cluster)
            manager.save(step, trainer.model, trainer.optimizer, save_only_lora_params=trainer._lora_enabled,
                         force=True, custom_metadata=metadata())

    trainer.custom_checkpoint_metadata = metadata
    trainer._save_last_checkpoint = save_last


@dataclasses.dataclass
class StageResult:
    """What a training stage did: its steps, where it stopped, and why."""
    stage: str
    start_step: int
    end_step: int
    max_steps: int
    seconds: float
    stopped_by_budget: bool
    timings: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # seconds per call

    @property
    def finished(self) -> bool:
        return self.end_step >= self.max_steps

    def message(self) -> str:
        text = (f"{self.stage}: steps {self.start_step}→{self.end_step} of {self.max_steps} "
                f"({self.end_step - self.start_step} this session, {self.seconds:.0f} s)")
        if self.stopped_by_budget and not self.finished:
            text += ("; the time budget ran out, a checkpoint is saved: run this part again "
                     "(or the next Kaggle session with this output attached) to continue")
        return text


# --- the time budget -----------------------------------------------------------------------------


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
        it inside the same budget (part 06 keeps the evaluations' minutes out of training's)."""
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
    """Minutes one evaluation of `examples` held-out problems takes, with a margin (part 06):
    scaled from this run's saved "sft" (else "baseline") evaluation, else from the batch count
    and `config.ASSUMED_SECONDS["eval_batch"]` (assumed for a TPU v5e-8, not yet measured)."""
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


def _until(batches: Iterator[Any], deadline: Deadline, skip: int) -> Iterator[Any]:
    """Pass batches through until the deadline; the `skip` already trained ones and one new
    batch always pass, so every session makes progress."""
    for index, batch in enumerate(batches):
        if index > skip and deadline.expired():
            print(f"time budget of {deadline.minutes} min reached: saving and stopping cleanly")
            return
        yield batch


# --- curriculum and learning rate ----------------------------------------------------------------


def phase_at(step: int, max_steps: int, shares: tuple[float, float] = (1 / 3, 1 / 3)) -> str:
    """Curriculum phase of GRPO batch `step` (0-based) of `max_steps`, easy → medium → hard: the
    first `shares[0]` of the run is easy, the next `shares[1]` medium, the rest hard."""
    if max_steps <= 0:
        raise ValueError(f"max_steps={max_steps} must be positive")
    easy_end = math.ceil(round(shares[0] * max_steps, 9))
    medium_end = math.ceil(round((shares[0] + shares[1]) * max_steps, 9))
    step = max(0, step)
    return PHASES[0] if step < easy_end else PHASES[1] if step < medium_end else PHASES[2]


def grpo_batch_count(config: TrainingConfig) -> int:
    """Global batches GRPO consumes: each gives (global / mini batch) × μ optimiser steps."""
    per_batch = (config.global_batch_size // config.mini_batch_size) * config.num_iterations
    return math.ceil(config.max_steps / per_batch)


def phase_of_step(step: int, config: TrainingConfig) -> str:
    """Curriculum phase of optimiser step `step` (1-based): the phase of the batch it learns from."""
    batches = grpo_batch_count(config)
    shares = (config.curriculum_easy_share, config.curriculum_medium_share)
    return phase_at((max(1, step) - 1) * batches // config.max_steps, batches, shares)


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
        pools[phase] = [e for e in examples if getattr(e, "difficulty", None) == phase] or list(examples)
        rng.shuffle(pools[phase])
    cursor = dict.fromkeys(PHASES, 0)
    order = []
    batches = grpo_batch_count(config)
    for batch in range(batches):
        phase = phase_at(batch, batches, (config.curriculum_easy_share, config.curriculum_medium_share))
        for _ in range(config.global_batch_size):
            order.append(pools[phase][cursor[phase] % len(pools[phase])])
            cursor[phase] += 1
    return order


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int) -> Callable[[Any], Any]:
    """Linear warm-up to `peak`, then cosine decay towards 0, as a function of optax's update
    count (part 06).

    optax reads a schedule at the count of updates done so far, so the first update reads
    count 0, where a warm-up starts at 0. This schedule is shifted by one: update k (1-based)
    runs at `peak × k / warmup_steps` during warm-up (never at 0), the last one at a small
    positive rate. `update_learning_rate(schedule, k)` reads the rate of update k.
    """
    warmup = max(0, min(warmup_steps, total_steps - 1))
    shifted = optax.schedules.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else peak, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1) + 1, end_value=0.0,
    )
    return lambda count: shifted(count + 1)


def update_learning_rate(schedule: Callable[[Any], Any], k: int) -> float:
    """The learning rate optax applies in update `k` (1-based): the schedule at count k − 1."""
    if k < 1:
        raise ValueError(f"update k={k} must be >= 1 (updates are counted from 1)")
    return float(schedule(k - 1))


# --- stage 1: SFT ------------------------------------------------------------------------------


def _tokenizer_adapter(tokenizer: Any) -> Any:

    if isinstance(tokenizer, tokenizer_adapter.TokenizerAdapter):
        return tokenizer
    return tokenizer_adapter.TokenizerAdapter(tokenizer)


def sft_example_tokens(example: Any, tokenizer: Any, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, loss mask) for one SFT example: BOS + prompt + course-format answer + <end_of_turn>.

    Only the answer tokens carry loss (the prompt is masked out); the answer ends with
    `<end_of_turn>` so the model learns to stop. Truncated from the right to `max_length`.
    """
    tok = _tokenizer_adapter(tokenizer)
    prompt = [tok.bos_id()] + list(tok.encode(build_prompt(example.question)))
    answer = list(tok.encode(format_solution(example) + END_OF_TURN))
    tokens = (prompt + answer)[:max_length]
    mask = ([0] * len(prompt) + [1] * len(answer))[:max_length]
    return np.array(tokens, np.int32), np.array(mask, np.int32)


def sft_batches(examples: Sequence[Any], tokenizer: Any, config: TrainingConfig) -> Iterator[Any]:
    """Padded SFT batches in a fixed, seeded order (cycling), `config.sft_steps` of them."""
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


def sft_model_inputs(tokenizer: Any) -> Callable[[Any], dict[str, Any]]:
    """PeftTrainer's `gen_model_input_fn` for SFT: positions and a causal mask that skip padding
    (`tokenizer`, or its pad id; the loss mask `input_mask` stays the answer-only mask)."""
    pad = tokenizer if isinstance(tokenizer, int) else _tokenizer_adapter(tokenizer).pad_id()

    def model_inputs(batch: Any) -> dict[str, Any]:
        not_pad = batch.input_tokens != pad
        return {"input_tokens": batch.input_tokens, "input_mask": batch.input_mask,
                "positions": sft_utils.build_positions_from_mask(not_pad),
                "attention_mask": sft_utils.make_causal_attn_mask(not_pad)}

    return model_inputs


def run_sft(trainer: Any, batches: Iterator[Any], config: TrainingConfig, metrics: Any,
            deadline: Deadline | None = None) -> StageResult:
    """Train SFT from where its newest checkpoint left off, until `config.sft_steps` or the
    deadline, every checkpoint with the course's sidecar (part 06)."""
    if config.sft_steps == 0:
        print("sft: sft_steps=0, skipping the warm-start")
        return StageResult("sft", 0, 0, 0, 0.0, False)
    install_sidecar(trainer, "sft", config, metrics)
    start = int(trainer.train_steps)
    metrics.resume(start)
    started, deadline = time.perf_counter(), deadline or Deadline(config.time_budget_minutes)
    if start < config.sft_steps:
        trainer.train(_until(batches, deadline, start))
    else:
        trainer.close()
    return StageResult("sft", start, int(trainer.train_steps), config.sft_steps, time.perf_counter() - started,
                       deadline.expired())


# --- stage 2: GRPO -----------------------------------------------------------------------------


def make_reference(base: Any, actor: Any, config: TrainingConfig, mesh: Any = None) -> Any:
    """GRPO's reference model π_ref, frozen, sharing the base weights with the actor.

    None when β = 0 (Tunix then computes no reference log-probabilities). "sft" (default): a
    second LoRA wrapper of the base holding a copy of the actor's current LoRA weights — call
    it after SFT, so the KL term anchors GRPO to the policy it starts from (as DeepSeek-R1
    does). "base": the untouched base model (the official Tunix notebook's choice).
    """
    if config.beta == 0:
        return None
    if config.grpo_reference == "base" or config.sft_steps == 0:
        return base

    reference = apply_lora(base, config, mesh)
    nnx.update(reference, lora_state(actor))
    return reference


def prompts_that_fit(examples: Sequence[Any], tokenizer: Any, config: TrainingConfig) -> list[Any]:
    """The examples whose prompt fits `max_prompt_length` tokens (a longer one would make
    Tunix's sampler round the prompt up past the KV cache); says how many it dropped."""
    counts = prompt_token_counts(_tokenizer_adapter(tokenizer), [build_prompt(e.question) for e in examples])
    kept = [e for e, n in zip(examples, counts) if n <= config.max_prompt_length]
    if not kept:
        raise ValueError(f"no prompt fits max_prompt_length={config.max_prompt_length} tokens; raise "
                         "max_prompt_length (and cache_size) in the config")
    if len(kept) < len(examples):
        print(f"prompts: dropped {len(examples) - len(kept)} of {len(examples)} longer than "
              f"{config.max_prompt_length} tokens")
    return kept


def grpo_prompts(config: TrainingConfig, actor: Any, tokenizer: Any, examples: Sequence[Any],
                 run_dir: str | Path, *, model_config: Any = None,
                 pass_rates_dir: str | Path | None = None) -> list[Any]:
    """The prompts GRPO trains on (part 06): every example whose prompt fits, or, with
    `config.filter_prompts`, the candidates the actor (the SFT policy) solves sometimes
    (`filtering`; pass rates cached in `pass_rates_dir`, default ``<run_dir>/pass_rates``)."""
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
            "filter_candidates or filter_samples_k, or choose other filter_difficulties")
    return filtering.examples_of(kept, fitting)


def end_of_turn_id(tokenizer: Any) -> int:
    """The id of Gemma's ``<end_of_turn>`` in `tokenizer` (106 in Gemma 3's vocabulary)."""
    ids = list(_tokenizer_adapter(tokenizer).encode(END_OF_TURN))
    if len(ids) != 1:
        raise ValueError(f"the tokenizer encodes {END_OF_TURN} as {ids}, not one token: it is not Gemma's")
    return int(ids[0])


def completions_with_stop(tokens: Sequence[np.ndarray], max_tokens: int, stop_id: int) -> list[np.ndarray]:
    """Completion tokens with the stop token put back on every reply that stopped by itself
    (`config.learn_to_stop`): Tunix's rollout cuts it off, so the loss would never see the
    decision to stop. A reply that ran to `max_tokens` never stopped and is left as it is."""
    return [np.append(np.asarray(t), np.asarray(stop_id, np.asarray(t).dtype)) if len(t) < max_tokens
            else np.asarray(t) for t in tokens]


def keep_stop_token(cluster: Any, config: TrainingConfig, stop_id: int) -> None:
    """Make the cluster's rollout return completions that keep their stop token."""
    generate = cluster.generate

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        output = generate(*args, **kwargs)
        output.tokens = completions_with_stop(output.tokens, config.max_generation_length, stop_id)
        return output

    cluster.generate = wrapper


GRPO_PHASES = {"rollout": "generate", "reference": "get_ref_per_token_logps",
               "old_policy": "get_old_per_token_logps", "update": "update_actor"}


def time_phases(cluster: Any) -> dict[str, list[float]]:
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


def reward_step(train_steps: int, config: TrainingConfig) -> float:
    """The GRPO step, 0 … max_steps − 1, whose rollouts are being scored when the actor has
    made `train_steps` updates: the annealed reward weights read it. Batch b is step
    b × (max_steps − 1) / (batches − 1), so the last batch pays exactly the end weights."""
    batches = grpo_batch_count(config)
    per_batch = (config.global_batch_size // config.mini_batch_size) * config.num_iterations
    batch = min(batches - 1, max(0, int(train_steps) // per_batch))
    return float(config.max_steps - 1) if batches == 1 else batch * (config.max_steps - 1) / (batches - 1)


def shuffle_within_groups(reward_fns: Sequence[Callable], group_size: int, seed: int) -> list[Callable]:
    """The control `control="shuffle"`: each reward function's outputs permuted within every
    group of G, by one permutation shared by all functions of a step (a reply is paid another
    reply's total). The logged accuracy and mixed-group share stay the true ones."""
    def permutation(completions: Any) -> np.ndarray:
        text = "\x00".join(str(c) for c in completions)
        rng = np.random.default_rng([seed, zlib.crc32(text.encode("utf-8", "replace"))])
        return rng.permuted(np.tile(np.arange(group_size), (len(completions) // group_size, 1)), axis=1)

    def wrap(fn: Callable) -> Callable:
        def shuffled(prompts: Any, completions: Any, answer: Any, **kwargs: Any) -> list[float]:
            grouped = np.asarray(fn(prompts, completions, answer, **kwargs), dtype=np.float64).reshape(-1, group_size)
            return np.take_along_axis(grouped, permutation(list(completions)), axis=1).ravel().tolist()

        shuffled.__name__ = shuffled.__qualname__ = fn.__name__
        if hasattr(fn, "last_breakdowns"):
            shuffled.last_breakdowns = fn.last_breakdowns  # type: ignore[attr-defined]
        return shuffled

    return [wrap(fn) for fn in reward_fns]


def show_on_progress_bar(trainer: Any, values: dict[str, float]) -> None:
    """Show `values` (this step's reward and accuracy) on Tunix's GRPO progress bar, beside its
    loss and KL. The bar is the trainer's private `_pbar`: without one, nothing is shown."""
    metrics = getattr(getattr(trainer, "_pbar", None), "metrics", None)
    if isinstance(metrics, dict):
        for name, value in values.items():
            metrics[f"rollout_train_{name}"] = round(float(value), 3)  # Tunix keeps "<prefix>_train_<name>" keys


def grpo_step_metrics(config: TrainingConfig, tokenizer: Any, reward_fns: Sequence[Callable],
                      show: Callable[[dict[str, float]], None] | None = None) -> Callable[..., dict]:
    """A Tunix metric function: the course's per-step numbers beyond Tunix's own (reward and
    components, tied and mixed-correctness groups, accuracy, format, truncation, weights, batch
    index; `metrics.py` lists them). `show` receives the step's reward (and accuracy)."""
    tok = _tokenizer_adapter(tokenizer)

    def metrics(prompts: list[str], completions: list[str], rewards: Any, advantages: Any,
                **kwargs: Any) -> dict[str, tuple[float, Callable]]:
        grouped = np.asarray(rewards, dtype=np.float64).reshape(-1, config.num_generations)
        out: dict[str, float] = {"reward_mean": float(grouped.mean()), "reward_std": float(grouped.std()),
                                 "zero_advantage_frac": float(np.mean(np.ptp(grouped, axis=1) < 1e-9))}
        limit = config.max_generation_length
        lengths = token_counts(tok, completions, limit)
        out["truncation_rate"] = float(np.mean([is_truncated(c, n, limit) for c, n in zip(completions, lengths)]))
        last = getattr(reward_fns[0], "last_breakdowns", None) if reward_fns else None
        breakdowns = last() if last is not None else []
        for name in dict.fromkeys(n for b in breakdowns for n in b.components):
            values = [float(b.components[name]) for b in breakdowns if name in b.components]
            out[f"reward_{name}_mean"], out[f"reward_{name}_std"] = float(np.mean(values)), float(np.std(values))
        if breakdowns:
            out.update({f"weight_{name}": float(value) for name, value in breakdowns[0].weights.items()})
            correct = [b.correct for b in breakdowns]
            out["accuracy"] = float(np.mean(correct))
            out["format_rate"] = float(np.mean([b.components["format"] >= 1.0 for b in breakdowns]))
            if len(correct) % config.num_generations == 0:
                out["mixed_group_frac"] = mixed_group_fraction(correct, config.num_generations)
        if show is not None:
            show({"reward": out["reward_mean"], **({"accuracy": out["accuracy"]} if "accuracy" in out else {})})
        logged = {f"course/{k}": (v, np.mean) for k, v in out.items()}
        if "batch_index" in kwargs:
            logged["course/batch_index"] = (float(np.min(kwargs["batch_index"])), np.min)
        return logged

    return metrics


def grpo_batches(order: Sequence[Any], config: TrainingConfig, *, rollout_config: Any = None,
                 deadline: Deadline | None = None, skip: int = 0) -> Iterator[dict[str, Any]]:
    """GRPO's input batches (Tunix wants dicts whose `prompts` are plain strings).

    Batch i also sets the rollout's sampling seed to a key derived from (seed, i): without it
    every step would draw the same completions (Tunix uses PRNGKey(0) when seed is None).
    """
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


def run_grpo(learner: Any, prompts: Sequence[Any], rollout_config: Any, config: TrainingConfig, metrics: Any,
             deadline: Deadline | None = None, timings: dict[str, list[float]] | None = None) -> StageResult:
    """Train GRPO from where its newest checkpoint left off, on the curriculum of `prompts`,
    until `config.max_steps` or the deadline, every checkpoint with the course's sidecar."""
    cluster = learner.rl_cluster
    trainer = cluster.actor_trainer
    install_sidecar(trainer, "grpo", config, metrics, cluster)
    start = int(trainer.train_steps)
    per_batch = config.max_steps / grpo_batch_count(config)
    cluster.global_steps = int(start // per_batch)  # batches done (Tunix 0.1.7's last save omits it)
    metrics.resume(start)
    started, deadline = time.perf_counter(), deadline or Deadline(config.time_budget_minutes)
    if start < config.max_steps and not deadline.expired():
        learner.train(grpo_batches(curriculum(prompts, config), config, rollout_config=rollout_config,
                                   deadline=deadline, skip=int(start // per_batch)))
    else:
        if deadline.expired() and start < config.max_steps:
            print("grpo: the time budget ran out before GRPO started; run this part again "
                  "(or the next Kaggle session with this output attached) to continue")
        cluster.close()
    return StageResult("grpo", start, int(trainer.train_steps), config.max_steps, time.perf_counter() - started,
                       deadline.expired(), timings or {})


# --- the notebook's stages as functions (the proof, benchmarks and tests call these) ---------------


def train_sft(config: TrainingConfig, actor: Any, tokenizer: Any, examples: Sequence[Any], run_dir: str | Path,
              *, deadline: Deadline | None = None, allow_config_change: bool = False) -> StageResult:
    """Part 06's SFT cells (`SFT_CELLS`) on `actor`: LoRA SFT with Tunix's PeftTrainer."""
    if config.sft_steps == 0:
        print("sft: sft_steps=0, skipping the warm-start")
        return StageResult("sft", 0, 0, 0, 0.0, False)
    return run_cells(SFT_CELLS, config=config, actor=actor, tokenizer=tokenizer, train=examples,
                     RUN_DIR=Path(run_dir).resolve(), deadline=deadline or Deadline(config.time_budget_minutes),
                     ALLOW_CONFIG_CHANGE=allow_config_change)["sft"]


def train_grpo(config: TrainingConfig, actor: Any, reference: Any, tokenizer: Any, examples: Sequence[Any],
               run_dir: str | Path, mesh: Any, *, deadline: Deadline | None = None,
               allow_config_change: bool = False, model_config: Any = None,
               pass_rates_dir: str | Path | None = None, reward_fns: Sequence[Callable] | None = None) -> StageResult:
    """Part 06's GRPO cells (`GRPO_CELLS`) with this `reference` model: RLCluster + GRPOLearner.

    `reward_fns` (Tunix reward functions) replace the reward cell's, and `pass_rates_dir` the
    filter's pass-rate cache (default ``<run_dir>/pass_rates``).
    """
    run_dir = Path(run_dir).resolve()
    given: dict[str, Any] = {"reference": reference}
    if reward_fns is not None:
        given["reward_fns"] = list(reward_fns)
    if pass_rates_dir is not None:
        prepare_stage(run_dir, "grpo", config, allow_config_change)
        given["prompts"] = grpo_prompts(config, actor, tokenizer, examples, run_dir, model_config=model_config,
                                        pass_rates_dir=pass_rates_dir)
    return run_cells([c for c in GRPO_CELLS if c not in given], **given, config=config, actor=actor,
                     tokenizer=tokenizer, model_config=model_config if model_config is not None else actor.config,
                     train=examples, RUN_DIR=run_dir, mesh=mesh, ALLOW_CONFIG_CHANGE=allow_config_change,
                     deadline=deadline or Deadline(config.time_budget_minutes))["grpo"]


def sft_optimizer(config: TrainingConfig) -> Any:
    """Part 06's SFT optimiser for `config` (its "sft_optimizer" cell)."""
    return run_cells(["sft_optimizer"], config=config)["sft_optimizer"]


def grpo_optimizer(config: TrainingConfig) -> Any:
    """Part 06's GRPO optimiser for `config` (its "grpo_optimizer" cell)."""
    return run_cells(["grpo_optimizer"], config=config)["grpo_optimizer"]


def grpo_algo_config(config: TrainingConfig) -> Any:
    """Part 06's `GRPOConfig` for `config` (its "grpo_config" cell), with the rollout's
    temperature, as GRPOLearner sets it."""
    algo = run_cells(["grpo_config"], config=config)["grpo_config"]
    algo.temperature = config.temperature
    return algo


# --- the whole of part 06's training from the command line -----------------------------------------


def run_config(run_dir: str | Path | None, profile: str | None) -> Any:
    """The configuration `main` trains with: `<run_dir>/config.json` when it exists, else the
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
    """`python -m course_utils.training [--profile P] [--run-dir D]`: part 06's SFT and GRPO
    cells, resumable, in one time budget (no evaluations)."""
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
