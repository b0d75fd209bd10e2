"""Training's plumbing for part 06: curriculum, batches, time budget, sidecars and resume. Part 06's
tagged cells build every training object; `run_cells` runs them (`train_sft`, `train_grpo`, tools/train)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
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
from tunix.sft import peft_trainer
from tunix.sft import utils as sft_utils

from course_utils import filtering
from course_utils.checkpoints import ConfigMismatchError, checkpoint_dir, latest_checkpoint
from course_utils.config import TrainingConfig
from course_utils.data import build_prompt, format_solution
from course_utils.evaluation import is_truncated, token_counts
from course_utils.generate import prompt_token_counts
from course_utils.tokenizer import BOS_ID, END_OF_TURN, PAD_ID

PHASES = ("easy", "medium", "hard")
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "06_training.py"
SFT_CELLS = ("sft_optimizer", "sft_trainer", "sft")
GRPO_CELLS = ("reference", "prompts", "grpo_config", "rollout_config", "grpo_optimizer", "rl_training_config",
              "rl_cluster", "stop_token", "timings", "reward_fns", "learner", "grpo")


def notebook_cells(path: Path = NOTEBOOK) -> dict[str, str]:
    """The code cells of a jupytext percent notebook that carry a tag, by their first tag."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: part 06's cells are read from a checkout of the course")
    cells = {}
    for block in re.split(r"^# %%", path.read_text(), flags=re.M)[1:]:
        header, _, body = block.partition("\n")
        tags = re.search(r'tags=\["([^"]+)"', header)
        if tags and "[markdown]" not in header:
            cells[tags.group(1)] = body
    return cells


def run_cells(tags: Sequence[str], **names: Any) -> dict[str, Any]:
    """Run part 06's cells with these tags, in the notebook's order, with `names` defined: their namespace."""
    cells = notebook_cells()
    if missing := [t for t in tags if t not in cells]:
        raise KeyError(f"{NOTEBOOK.name} has no cell tagged {missing}")
    namespace = dict(names)
    for tag in (t for t in cells if t in tags):
        exec(compile(cells[tag], f"{NOTEBOOK.name}[{tag}]", "exec"), namespace)
    return namespace


def latest_stage_checkpoint(run_dir: str | Path, stage: str) -> Any:
    """The newest complete checkpoint of a stage in this run (a `CheckpointInfo`), or None."""
    return latest_checkpoint(checkpoint_dir(run_dir, stage))


def prepare_stage(run_dir: str | Path, stage: str, config: TrainingConfig, allow_config_change: bool = False) -> None:
    """Drop a step-0 checkpoint; refuse to resume a stage whose `stage_fields` changed unless told to."""
    untrained = checkpoint_dir(run_dir, stage) / "0"
    if untrained.is_dir():
        shutil.rmtree(untrained)
        print(f"{stage}: removed {untrained}, saved before any {stage} step (restored, it would undo training)")
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


def install_sidecar(trainer: Any, stage: str, config: TrainingConfig, metrics: Any, cluster: Any = None) -> None:
    """Every checkpoint (not at step 0) gets the course's sidecar, with its steps' metric rows on disk."""
    own = trainer.custom_checkpoint_metadata

    def flush_rows() -> None:  # the rows Tunix 0.1.7 still holds: update s's loss, batch b's rollouts
        held = getattr(trainer, "_prev_buffered_train_metrics", None)
        if held is not None:
            held.step += 1  # as _write_train_metrics does: the update count after this update
            trainer._write_metrics(held)
            trainer._prev_buffered_train_metrics = None
        buffered = getattr(cluster, "_buffered_train_metrics", None)
        for item in buffered or ():
            cluster._log_metrics(item)
        if buffered:
            buffered.clear()
        metrics.flush(int(trainer.train_steps))

    def metadata() -> dict[str, Any]:
        step = int(trainer.train_steps)
        # Tunix asks at every update, saves at the interval's steps and when there is no checkpoint yet
        if step > 0 and (step % config.checkpoint_every == 0 or trainer.checkpoint_manager.latest_step() is None):
            flush_rows()
        return {**own(), "course": {
            "stage": stage, "phase": phase_of_step(step, config) if stage == "grpo" else stage,
            "config_fingerprint": config.fingerprint(config.stage_fields(stage)), "config": config.to_dict(),
            "metrics_rows": len(metrics.rows)}}

    def save_last() -> None:
        manager, step = trainer.checkpoint_manager, int(trainer.train_steps)
        if step > 0 and (manager.latest_step() is None or manager.latest_step() < step):
            flush_rows()
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

    def message(self) -> str:
        text = (f"{self.stage}: steps {self.start_step}→{self.end_step} of {self.max_steps} "
                f"({self.end_step - self.start_step} this session, {self.seconds:.0f} s)")
        if self.stopped_by_budget and self.end_step < self.max_steps:
            text += ("; the time budget ran out, a checkpoint is saved: run this part again "
                     "(or the next Kaggle session with this output attached) to continue")
        return text


class Deadline:
    """The time budget: `expired()` turns true `minutes` after creation (never, for None)."""
    def __init__(self, minutes: float | None, end: float | None = None) -> None:
        self.minutes = minutes
        self.end = end if end is not None or minutes is None else time.monotonic() + 60.0 * minutes

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def reserve(self, minutes: float) -> Deadline:
        """A deadline `minutes` earlier, keeping them for what follows (part 06's evaluations)."""
        if minutes < 0:
            raise ValueError(f"minutes={minutes} must be zero or more")
        return self if self.end is None else Deadline(max(0.0, self.minutes - minutes), self.end - 60.0 * minutes)

    def until(self, batches: Iterator[Any], skip: int) -> Iterator[Any]:
        """Batches until the deadline; the `skip` already trained ones and one new one always pass."""
        for index, batch in enumerate(batches):
            if index > skip and self.expired():
                print(f"time budget of {self.minutes} min reached: saving and stopping cleanly")
                return
            yield batch


def phase_at(step: int, max_steps: int, shares: tuple[float, float] = (1 / 3, 1 / 3)) -> str:
    """Curriculum phase of GRPO batch `step` (0-based) of `max_steps`: easy, medium, hard by `shares`."""
    if max_steps <= 0:
        raise ValueError(f"max_steps={max_steps} must be positive")
    easy_end = math.ceil(round(shares[0] * max_steps, 9))
    medium_end = math.ceil(round((shares[0] + shares[1]) * max_steps, 9))
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
    """GRPO's examples in order, a pure function (resume is exact): each batch from its phase's pool."""
    if not examples:
        raise ValueError("curriculum needs at least one training example; check load_splits(config)['train']")
    rng, pools = random.Random(config.seed), {}
    for phase in PHASES:
        pool = [e for e in examples if getattr(e, "difficulty", None) == phase] or list(examples)
        rng.shuffle(pool)
        pools[phase] = itertools.cycle(pool)
    batches, shares = grpo_batch_count(config), (config.curriculum_easy_share, config.curriculum_medium_share)
    phases = [phase_at(b, batches, shares) for b in range(batches)]
    return [next(pools[phase]) for phase in phases for _ in range(config.global_batch_size)]


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int) -> Callable[[Any], Any]:
    """Warm-up to `peak`, then cosine decay, shifted so that update k runs at `peak × k / warmup` (not 0)."""
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


def sft_batches(examples: Sequence[Any], tokenizer: Any, config: TrainingConfig) -> Iterator[Any]:
    """`sft_steps` padded, seeded batches of BOS + prompt + answer + <end_of_turn>, loss on the answer."""
    if not examples:
        raise ValueError("SFT needs training examples; load_splits(config)['train'] is empty")
    size, length = config.sft_batch_size, config.sft_max_length
    fitting = []  # a target cut at sft_max_length would teach never to stop: left out
    for example in examples:
        prompt = [BOS_ID, *tokenizer.encode(build_prompt(example.question))]
        answer = list(tokenizer.encode(format_solution(example) + END_OF_TURN))
        if len(prompt) + len(answer) <= length:
            fitting.append((prompt + answer, [0] * len(prompt) + [1] * len(answer)))
    if not fitting:
        raise ValueError(f"no SFT example fits sft_max_length={length} tokens; raise it in the config")
    if len(fitting) < len(examples):
        print(f"sft: left out {len(examples) - len(fitting)} of {len(examples)} examples longer than {length} tokens")
    random.Random(config.seed + 1).shuffle(fitting)
    for step in range(config.sft_steps):
        tokens = np.full((size, length), PAD_ID, np.int32)
        mask = np.zeros((size, length), np.int32)
        for row in range(size):
            t, m = fitting[(step * size + row) % len(fitting)]
            tokens[row, : len(t)], mask[row, : len(m)] = t, m
        yield peft_trainer.TrainingInput(input_tokens=tokens, input_mask=mask)


def sft_model_inputs(batch: Any) -> dict[str, Any]:
    """PeftTrainer's `gen_model_input_fn` for SFT: positions and a causal mask that skip padding."""
    not_pad = batch.input_tokens != PAD_ID
    return {"input_tokens": batch.input_tokens, "input_mask": batch.input_mask,
            "positions": sft_utils.build_positions_from_mask(not_pad),
            "attention_mask": sft_utils.make_causal_attn_mask(not_pad)}


def run_sft(trainer: Any, batches: Iterator[Any], config: TrainingConfig, metrics: Any,
            deadline: Deadline) -> StageResult:
    """Train SFT from its newest checkpoint until `config.sft_steps` or the deadline (part 06)."""
    if config.sft_steps == 0:
        print("sft: sft_steps=0, skipping the warm-start")
        return StageResult("sft", 0, 0, 0, 0.0, False)
    install_sidecar(trainer, "sft", config, metrics)
    start = int(trainer.train_steps)
    metrics.resume(start)
    started = time.perf_counter()
    if start < config.sft_steps:
        trainer.train(deadline.until(batches, start))
    else:
        trainer.close()
    return StageResult("sft", start, int(trainer.train_steps), config.sft_steps, time.perf_counter() - started,
                       deadline.expired())


def prompts_that_fit(examples: Sequence[Any], tokenizer: Any, config: TrainingConfig) -> list[Any]:
    """The examples whose prompt fits `max_prompt_length` tokens (Tunix's sampler would overrun the cache)."""
    counts = prompt_token_counts(tokenizer, [build_prompt(e.question) for e in examples])
    kept = [e for e, n in zip(examples, counts) if n <= config.max_prompt_length]
    if not kept:
        raise ValueError(f"no prompt fits max_prompt_length={config.max_prompt_length} tokens; raise "
                         "max_prompt_length (and cache_size) in the config")
    if len(kept) < len(examples):
        print(f"prompts: dropped {len(examples) - len(kept)} of {len(examples)} over {config.max_prompt_length} tokens")
    return kept


def grpo_prompts(config: TrainingConfig, actor: Any, tokenizer: Any, examples: Sequence[Any],
                 run_dir: str | Path, model_config: Any, pass_rates_dir: str | Path | None = None) -> list[Any]:
    """The examples whose prompt fits, or with `filter_prompts` the candidates the actor solves sometimes."""
    fitting = prompts_that_fit(examples, tokenizer, config)
    if not config.filter_prompts:
        return fitting
    sft = latest_stage_checkpoint(run_dir, "sft") if config.sft_steps else None
    rates = filtering.measure_pass_rates(
        actor, tokenizer, model_config, filtering.candidate_prompts(fitting, config), config,
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


def shuffle_within_groups(reward_fns: Sequence[Callable], group_size: int, seed: int) -> list[Callable]:
    """The control `control="shuffle"`: all rewards of a step permuted alike within each group of G."""
    def wrap(fn: Callable) -> Callable:
        def shuffled(prompts: Any, completions: Any, answer: Any, **kwargs: Any) -> list[float]:
            text = "\x00".join(str(c) for c in completions).encode("utf-8", "replace")
            grouped = np.asarray(fn(prompts, completions, answer, **kwargs), dtype=np.float64).reshape(-1, group_size)
            return np.random.default_rng([seed, zlib.crc32(text)]).permuted(grouped, axis=1).ravel().tolist()

        return functools.update_wrapper(shuffled, fn)  # its name, and `last_breakdowns`

    return [wrap(fn) for fn in reward_fns]


def grpo_step_metrics(config: TrainingConfig, tokenizer: Any, reward_fns: Sequence[Callable],
                      cluster: Any = None) -> Callable[..., dict]:
    """Tunix metric function of the course's per-step numbers, also shown on `cluster`'s progress bar."""
    def metrics(prompts: list[str], completions: list[str], rewards: Any, advantages: Any,
                **kwargs: Any) -> dict[str, tuple[float, Callable]]:
        grouped = np.asarray(rewards, dtype=np.float64).reshape(-1, config.num_generations)
        out: dict[str, float] = {"reward_mean": float(grouped.mean()), "reward_std": float(grouped.std()),
                                 "zero_advantage_frac": float(np.mean(np.ptp(grouped, axis=1) < 1e-9))}
        limit = config.max_generation_length
        lengths = token_counts(tokenizer, completions, limit)
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
                out["mixed_group_frac"] = filtering.mixed_group_fraction(correct, config.num_generations)
        bar = getattr(getattr(getattr(cluster, "actor_trainer", None), "_pbar", None), "metrics", None)
        if isinstance(bar, dict):  # Tunix's bar keeps "<prefix>_train_<name>" keys
            shown = {"reward": out["reward_mean"], **({"accuracy": out["accuracy"]} if "accuracy" in out else {})}
            bar.update({f"rollout_train_{k}": round(v, 3) for k, v in shown.items()})
        logged = {f"course/{k}": (v, np.mean) for k, v in out.items()}
        if "batch_index" in kwargs:
            logged["course/batch_index"] = (float(np.min(kwargs["batch_index"])), np.min)
        return logged

    return metrics


def grpo_batches(order: Sequence[Any], config: TrainingConfig, rollout_config: Any) -> Iterator[dict[str, Any]]:
    """GRPO's batches as numpy arrays (Tunix np.repeats each field); batch i seeds the rollout anew."""
    size = config.global_batch_size
    for index in range(len(order) // size):
        rollout_config.seed = jax.random.PRNGKey(config.seed * 1_000_003 + index)
        chunk = order[index * size:(index + 1) * size]
        yield {
            "prompts": np.array([build_prompt(e.question) for e in chunk]),
            "answer": np.array([e.answer for e in chunk]),
            "question": np.array([e.question for e in chunk]),
            "difficulty": np.array([e.difficulty for e in chunk]),
            "batch_index": np.full(len(chunk), index),
        }


def run_grpo(learner: Any, prompts: Sequence[Any], rollout_config: Any, config: TrainingConfig, metrics: Any,
             deadline: Deadline, timings: dict[str, list[float]] | None = None) -> StageResult:
    """Train GRPO from its newest checkpoint on the curriculum of `prompts` until max_steps or the deadline."""
    cluster = learner.rl_cluster
    trainer = cluster.actor_trainer
    install_sidecar(trainer, "grpo", config, metrics, cluster)
    start = int(trainer.train_steps)
    done = int(start // (config.max_steps / grpo_batch_count(config)))
    cluster.global_steps = done  # batches done (Tunix 0.1.7's last save omits it)
    metrics.resume(start)
    started = time.perf_counter()
    if start < config.max_steps and not deadline.expired():
        learner.train(deadline.until(grpo_batches(curriculum(prompts, config), config, rollout_config), done))
    else:
        if deadline.expired() and start < config.max_steps:
            print("grpo: the time budget ran out before GRPO started; run this part again "
                  "(or the next Kaggle session with this output attached) to continue")
        cluster.close()
    return StageResult("grpo", start, int(trainer.train_steps), config.max_steps, time.perf_counter() - started,
                       deadline.expired(), timings or {})


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
    """Part 06's GRPO cells with this `reference`; `reward_fns`, `pass_rates_dir` replace the cells' own."""
    run_dir, model_config = Path(run_dir).resolve(), model_config or actor.config
    given: dict[str, Any] = {"reference": reference}
    if reward_fns is not None:
        given["reward_fns"] = list(reward_fns)
    if pass_rates_dir is not None:
        prepare_stage(run_dir, "grpo", config, allow_config_change)
        given["prompts"] = grpo_prompts(config, actor, tokenizer, examples, run_dir, model_config, pass_rates_dir)
    return run_cells([c for c in GRPO_CELLS if c not in given], **given, config=config, actor=actor,
                     tokenizer=tokenizer, model_config=model_config, train=examples, RUN_DIR=run_dir,
                     mesh=mesh, ALLOW_CONFIG_CHANGE=allow_config_change, deadline=deadline or Deadline(config.time_budget_minutes))["grpo"]
