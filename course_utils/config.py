"""Every knob of the course in one dataclass, and its profiles (part 02).

`TrainingConfig()` is Gemma 3 1B-it with the Tunix Gemma notebook's GRPO values; each profile is
a `dataclasses.replace` of it. A bad value raises `ValueError` naming field, value, what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from course_utils.data import DIFFICULTIES
from course_utils.data import SOURCES as DATA_SOURCES
from course_utils.env import default_profile, run_dir
from course_utils.files import atomic_write

PROFILES = ("smoke", "cpu", "gpu", "tpu")
REWARD_WEIGHT_FIELDS = ("format_reward_weight", "coherence_reward_weight",
                        "correctness_reward_weight", "efficiency_reward_weight")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """All settings of one course run (part 02); every later part reads it. Symbols: part 02."""

    profile: str = "tpu"
    model: str = "gemma3-1b-it"  # tiny (random, 2 layers) | gemma3-270m | gemma3-1b-it
    kaggle_handle: str = "google/gemma-3/flax/gemma3-1b-it"  # or .../transformers/gemma-3-1b-it
    param_dtype: str = "bfloat16"  # bfloat16 | float32 (CPU: faster, exact)
    vocab_trim: bool = False  # keep only the course's embedding rows (part 04, course_utils.vocab)
    seed: int = 42
    # --- data (part 03)
    data_source: str = "auto"  # auto | synthetic | local | huggingface
    train_examples: int | None = None  # None = the whole training split
    val_examples: int = 200
    eval_examples: int | None = None  # None = all 1,319 GSM8K test problems
    # --- GRPO (part 02)
    num_generations: int = 4  # G
    beta: float = 0.08  # β, KL weight
    epsilon: float = 0.2  # ε, clip range
    num_iterations: int = 1  # μ
    kl_loss_mode: str = "low_var_kl"  # low_var_kl (k3) | kl | mse_kl
    grpo_loss_fn: str = "grpo"  # grpo | grpo_completion_head (course_utils.policy_loss)
    grpo_reference: str = "sft"  # π_ref: sft | base
    loss_agg_mode: str = "sequence-mean-token-mean"  # part 02, section 3b
    advantage_estimator: str = "grpo"  # A: grpo (r − mean)/std | drgrpo r − mean | rloo
    learn_to_stop: bool = True  # <end_of_turn> trained with the reply's advantage (part 06)
    max_steps: int = 500
    curriculum_easy_share: float = 1 / 3  # of the GRPO steps; hard gets the rest (part 06)
    curriculum_medium_share: float = 1 / 3
    # --- batches: prompts per step, per update (mini), per backward pass (micro)
    global_batch_size: int = 4
    mini_batch_size: int = 4
    micro_batch_size: int = 4
    # --- AdamW with warm-up and cosine decay
    learning_rate: float = 3e-6  # η
    adam_b1: float = 0.9
    adam_b2: float = 0.99
    weight_decay: float = 0.1
    warmup_ratio: float = 0.1
    max_grad_norm: float = 0.1
    # --- LoRA (part 04)
    lora_rank: int = 8  # r
    lora_alpha: float = 16.0  # α; the update is scaled by α / r
    # --- lengths (tokens) and sampling
    max_prompt_length: int = 256
    max_generation_length: int = 512
    cache_size: int = 1024  # must hold prompt + generation
    temperature: float = 0.9  # τ
    top_p: float = 1.0
    top_k: int = 50
    # --- rewards (part 03): weights summing to 1, annealed from start to end
    format_reward_weight: float = 0.25
    coherence_reward_weight: float = 0.20
    correctness_reward_weight: float = 0.55
    efficiency_reward_weight: float = 0.0
    anneal_reward_weights: bool = True
    anneal_trace_weight_start: float = 0.45  # trace = format + coherence
    anneal_trace_weight_end: float = 0.25
    anneal_correct_weight_start: float = 0.40  # the rest pays calibration
    anneal_correct_weight_end: float = 0.60
    verbosity_penalty: float = 0.1
    # --- pass-rate filtering of GRPO's prompts (part 06)
    filter_prompts: bool = False
    filter_samples_k: int = 8
    filter_candidates: int = 256
    filter_difficulties: str = "easy,medium,hard"
    filter_pass_rate_min: float = 0.1  # keep min <= p̂ <= max
    filter_pass_rate_max: float = 0.9
    control: str | None = None  # None | lr0 (learning rate 0) | shuffle (rewards within groups)
    # --- SFT warm-start (part 06)
    sft_steps: int = 200
    sft_learning_rate: float = 2e-4
    sft_batch_size: int = 8
    sft_max_length: int = 512
    # --- evaluation (part 07)
    eval_batch_size: int = 32
    eval_samples_k: int = 4  # k of pass@k / maj@k
    eval_sampled_examples: int | None = 256  # problems that get k sampled replies; None = all
    # --- checkpoints and time
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    time_budget_minutes: float | None = 8.5 * 60  # stop cleanly before Kaggle's 9 hours

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def for_profile(cls, name: str, **overrides: Any) -> "TrainingConfig":
        """The configuration of profile `name` (smoke | cpu | gpu | tpu), plus `overrides`."""
        if name not in PROFILES:
            raise ValueError(f"profile={name!r} is unknown; choose one of {', '.join(PROFILES)} "
                             "(set COURSE_PROFILE or pass it to TrainingConfig.for_profile).")
        changes = {**_PROFILE_CHANGES[name], "profile": name, **overrides}
        _check_field_names(changes)
        return dataclasses.replace(cls(), **changes)

    @classmethod
    def from_env(cls, **overrides: Any) -> "TrainingConfig":
        """The profile named by `COURSE_PROFILE`, or the one the hardware suggests."""
        return cls.for_profile(_profile_name(), **overrides)

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_ratio * self.max_steps))

    @property
    def reward_weights(self) -> dict[str, float]:
        """The four composite-reward weights by component name (format, coherence, ...)."""
        return {f.removesuffix("_reward_weight"): getattr(self, f) for f in REWARD_WEIGHT_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self, fields: tuple[str, ...] | None = None) -> str:
        """A short hash of the settings (all, or just `fields`); checkpoints record it."""
        data = {k: v for k, v in self.to_dict().items() if fields is None or k in fields}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def stage_fields(self, stage: str) -> tuple[str, ...]:
        """The fields that shape what stage "sft" or "grpo" learns (part 06): a run may continue
        in a later session after any other field changed, not after one of these."""
        if stage == "sft":
            return SFT_FIELDS
        if stage == "grpo":
            return tuple(f for f in self.to_dict() if f not in SESSION_FIELDS)
        raise ValueError(f"stage={stage!r} is unknown; use 'sft' or 'grpo'")

    def evaluation_fields(self, name: str) -> tuple[str, ...]:
        """The fields an evaluation of model `name` depends on (parts 06, 07): the baseline only
        on decoding, data and rewards; "sft" also on SFT's; anything else on all."""
        fields = {"baseline": EVAL_FIELDS, "sft": tuple(dict.fromkeys(EVAL_FIELDS + SFT_FIELDS))}
        return fields.get(name, tuple(self.to_dict()))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the configuration as JSON (part 02 saves it into the run directory)."""
        return atomic_write(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainingConfig":
        """Read a configuration written by `save`; unknown or missing fields are errors."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"No configuration at {path}. Run part 02 (02_grpo_config) "
                                    "first, or build one with TrainingConfig.from_env().") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); delete it, rerun part 02.") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds a {type(data).__name__}, not a JSON object of fields.")
        _check_field_names(data)
        return cls(**data)


# Fields that may change between two sessions of one run; GRPO depends on all the others.
SESSION_FIELDS = ("profile", "time_budget_minutes", "checkpoint_every", "keep_checkpoints",
                  "eval_examples", "eval_batch_size", "eval_samples_k")
# What decides the training examples (data.load_splits: the validation draw comes first).
DATA_FIELDS = ("seed", "data_source", "train_examples", "val_examples")
SFT_FIELDS = ("model", "param_dtype", "vocab_trim", *DATA_FIELDS, "lora_rank", "lora_alpha",
              "adam_b1", "adam_b2", "weight_decay", "sft_steps", "sft_learning_rate",
              "sft_batch_size", "sft_max_length")
# What an evaluation of the untrained model depends on; the composite reward is scored with the
# last GRPO step's weights (rewards.final_weights), hence the annealing's end points.
EVAL_FIELDS = ("model", "param_dtype", "vocab_trim", "kaggle_handle", *DATA_FIELDS, "eval_examples",
               "max_prompt_length", "max_generation_length", "cache_size", "temperature", "top_p",
               "top_k", "eval_samples_k", "eval_sampled_examples", *REWARD_WEIGHT_FIELDS,
               "verbosity_penalty", "anneal_reward_weights", "anneal_trace_weight_end",
               "anneal_correct_weight_end")

# What each profile changes from the defaults; nothing else differs.
_PROFILE_CHANGES: dict[str, dict[str, Any]] = {
    # The full run's revised recipe, UNVALIDATED until a TPU run; each value's source is in the
    # README, "Rehearsed at full size" (memory: XLA CPU compiles on 8 simulated devices).
    "tpu": dict(
        beta=0.0,  # no KL term, no reference model (DAPO, nanochat); saves 0.24 GiB per chip
        loss_agg_mode="token-mean",  # DAPO: no per-reply length discount
        advantage_estimator="drgrpo",  # Dr. GRPO (arXiv 2503.20783): no std scaling
        learning_rate=3e-5,  # LoRA Without Regret: ≈ 10× full fine-tuning's rate
        max_grad_norm=1.0,  # 0.1 would clip nearly every step at a 10× rate
        num_generations=8,  # P(signal) = 1 − pᴳ − (1 − p)ᴳ: 0.83 at p = 0.2 (G = 4: 0.59)
        micro_batch_size=1,  # G = 8 sequences of 256 + 512 tokens: 8.61 GiB of a 16 GiB chip
        filter_prompts=True, filter_candidates=1024,  # difficulty filtering (arXiv 2504.03380)
        # correctness-led reward (DAPO, nanochat)
        format_reward_weight=0.15, coherence_reward_weight=0.05, correctness_reward_weight=0.80,
        anneal_trace_weight_start=0.25, anneal_trace_weight_end=0.10,
        anneal_correct_weight_start=0.70, anneal_correct_weight_end=0.85,
    ),
    "gpu": {},
    "cpu": dict(
        model="gemma3-270m", param_dtype="float32", vocab_trim=True,
        grpo_loss_fn="grpo_completion_head",
        data_source="synthetic", train_examples=2000, val_examples=50, eval_examples=200,  # offline
        max_steps=14,  # part 06 cold in under 30 minutes on 2 cores
        curriculum_easy_share=0.6, curriculum_medium_share=0.25,  # the 270M solves easy ones
        global_batch_size=2, mini_batch_size=2,
        micro_batch_size=1,  # half the activations (16 GB laptop)
        beta=0.2,  # measured: keeps format ≥ 90 %
        loss_agg_mode="token-mean", advantage_estimator="drgrpo",  # from the literature (issue 11)
        learning_rate=3e-5, max_grad_norm=1.0, lora_rank=16, lora_alpha=32.0,
        max_prompt_length=144, max_generation_length=160, cache_size=304,
        temperature=0.7,  # measured after SFT: easy rollouts 19 % right at 0.7, 14 % at 0.9
        sft_steps=40, sft_batch_size=4, sft_max_length=224, eval_batch_size=16,
        eval_sampled_examples=32, checkpoint_every=10, time_budget_minutes=120.0,
    ),
    "smoke": dict(
        model="tiny", param_dtype="float32", vocab_trim=True, grpo_loss_fn="grpo_completion_head",
        data_source="synthetic", train_examples=32, val_examples=8, eval_examples=8, max_steps=4,
        global_batch_size=1, mini_batch_size=1, micro_batch_size=1, learning_rate=1e-3,
        max_prompt_length=160, max_generation_length=16, cache_size=176, top_k=8,
        sft_steps=3, sft_batch_size=2, sft_max_length=192, eval_batch_size=4, eval_samples_k=2,
        checkpoint_every=2, time_budget_minutes=10.0,
    ),
}

# Validation, by each field's type: a str must be one of CHOICES; an int >= INT_MIN (default 1);
# a float finite, in [0, FLOAT_MAX] (default 1.0), above 0 for OPEN_LOW; `| None` allows None.
CHOICES = {
    "profile": PROFILES, "model": ("tiny", "gemma3-270m", "gemma3-1b-it"),
    "param_dtype": ("bfloat16", "float32"), "data_source": DATA_SOURCES,
    "kl_loss_mode": ("low_var_kl", "kl", "mse_kl"), "control": (None, "lr0", "shuffle"),
    "grpo_loss_fn": ("grpo", "grpo_completion_head"), "grpo_reference": ("sft", "base"),
    # Tunix 0.1.7's `aggregate_loss` modes and registered advantage estimators
    "loss_agg_mode": ("sequence-mean-token-mean", "token-mean", "sequence-mean-token-scale",
                      "seq-mean-token-sum", "sequence-mean-token-sum-norm"),
    "advantage_estimator": ("grpo", "drgrpo", "rloo"),
}
INT_MIN = {"seed": 0, "val_examples": 0, "sft_steps": 0, "eval_sampled_examples": 0,
           "num_generations": 2}
FLOAT_MAX = {"beta": 10.0, "temperature": 10.0, "max_grad_norm": 1e6, "lora_alpha": 1e6,
             "time_budget_minutes": 1e6}
OPEN_LOW = ("epsilon", "learning_rate", "sft_learning_rate", "max_grad_norm", "lora_alpha", "top_p",
            "time_budget_minutes")


def _check_field_names(data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(TrainingConfig)})
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; the known fields are listed in "
                         "course_utils.config.TrainingConfig (check the spelling).")


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{field}={value!r} is not allowed: {allowed}.")


def _check_type(name: str, kind: str, v: Any) -> None:
    """One field against its type's rule (see CHOICES, INT_MIN, FLOAT_MAX, OPEN_LOW)."""
    optional = kind.endswith("| None")
    if optional and v is None:
        return
    none = " or None" if optional else ""
    if name in CHOICES and v not in CHOICES[name]:
        _fail(name, v, f"choose one of {', '.join(map(str, CHOICES[name]))}")
    elif kind == "bool" and not isinstance(v, bool):
        _fail(name, v, "must be True or False")
    elif kind.startswith("int") and (type(v) is not int or v < INT_MIN.get(name, 1)):
        _fail(name, v, f"must be an integer >= {INT_MIN.get(name, 1)}{none}")
    elif kind.startswith("float"):
        high, open_low = FLOAT_MAX.get(name, 1.0), name in OPEN_LOW
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not (ok and (v > 0.0 if open_low else v >= 0.0) and v <= high):
            low = "(0.0" if open_low else "[0.0"
            _fail(name, v, f"must be a finite number in {low}, {high}]{none}")


def _validate(c: TrainingConfig) -> None:
    """Check every field; the first bad one raises ValueError(field, value, what is allowed)."""
    for f in dataclasses.fields(c):
        _check_type(f.name, str(f.type), getattr(c, f.name))  # "int | None": annotations are text
    if not re.search("/(flax|transformers)/", str(c.kaggle_handle)):
        _fail("kaggle_handle", c.kaggle_handle, "use a Kaggle model handle owner/model/"
              "flax|transformers/variant, e.g. google/gemma-3/flax/gemma3-1b-it")
    kept = c.filter_difficulties.split(",") if isinstance(c.filter_difficulties, str) else [""]
    if any(d.strip() not in DIFFICULTIES for d in kept):
        _fail("filter_difficulties", c.filter_difficulties,
              "a comma-separated list of easy, medium, hard, e.g. 'easy,medium'")
    if c.filter_pass_rate_min > c.filter_pass_rate_max:
        _fail("filter_pass_rate_min", c.filter_pass_rate_min,
              f"must be <= filter_pass_rate_max={c.filter_pass_rate_max}")
    total = sum(c.reward_weights.values())
    if abs(total - 1.0) > 1e-6:
        _fail("reward weights", c.reward_weights,
              f"they must sum to 1 (within 1e-6) but sum to {total:.6g}")
    shares = c.curriculum_easy_share + c.curriculum_medium_share
    if shares > 1.0 + 1e-9:
        _fail("curriculum_medium_share", c.curriculum_medium_share, "curriculum_easy_share + "
              f"curriculum_medium_share must be <= 1 (hard gets the rest) but is {shares:.6g}")
    for end in ("start", "end"):
        trace, correct = f"anneal_trace_weight_{end}", f"anneal_correct_weight_{end}"
        used = getattr(c, trace) + getattr(c, correct) + c.efficiency_reward_weight
        if used > 1.0 + 1e-6:
            _fail(trace, getattr(c, trace), f"{trace} + {correct} + efficiency_reward_weight "
                  f"must be <= 1 (the rest pays calibration) but is {used:.6g}")
    for big, small in (("global_batch_size", "mini_batch_size"),
                       ("mini_batch_size", "micro_batch_size")):
        if getattr(c, big) % getattr(c, small):
            _fail(big, getattr(c, big), f"must be a multiple of {small}={getattr(c, small)}")
    tokens = c.max_prompt_length + c.max_generation_length
    if tokens > c.cache_size:
        _fail("cache_size", c.cache_size, f"must hold max_prompt_length + max_generation_length = "
              f"{c.max_prompt_length} + {c.max_generation_length} = {tokens} tokens; "
              "raise cache_size or shorten them")


CONFIG_FILE = "config.json"
GSM8K_TEST_SIZE = 1319
# ASSUMED for a TPU v5e-8 (overhead: per session), not measured: replace with a real run's
# figures (part 06's metrics) via `measured=` / `estimate --grpo-step`.
ASSUMED_SECONDS = {"grpo_step": 15.0, "sft_step": 1.0, "eval_batch": 12.0,
                   "notebook_overhead": 600.0}


def _profile_name() -> str:
    return os.environ.get("COURSE_PROFILE", "").strip().lower() or default_profile()


def load_run_config(profile: str | None = None, **overrides: Any) -> TrainingConfig:
    """The configuration a part should use: part 02's saved JSON for this profile, else fresh.

    Every notebook from part 03 on starts with this, so it runs cold; `overrides` win.
    """
    name = profile or _profile_name()
    path = run_dir(name) / CONFIG_FILE
    if path.exists():
        config = TrainingConfig.load(path)
        if config.profile != name:
            raise ValueError(f"{path} holds profile {config.profile!r}, not {name!r}; delete it or "
                             "point COURSE_RUN_DIR at another folder.")
        source = f"loaded {path}"
    else:
        config = TrainingConfig.for_profile(name)
        source = f"built fresh (no {path} yet; part 02 writes it)"
    if overrides:
        _check_field_names(overrides)
        config = dataclasses.replace(config, **overrides)
        source += f", overrides {sorted(overrides)}"
    print(f"config: profile {name!r}, {source}")
    return config
