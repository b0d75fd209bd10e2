"""Every knob of the course in one dataclass, and the three profiles (part 02).

`TrainingConfig()` holds the defaults: Gemma 3 1B-it with the official Tunix Gemma notebook's
GRPO values. The profiles are `dataclasses.replace` of it, never copies, so a default changed
here changes every profile; the `tpu` profile (the full run on a Kaggle TPU) revises the GRPO
recipe (`_PROFILE_CHANGES["tpu"]`, each value with its source):

>>> cfg = TrainingConfig.for_profile("smoke")
>>> cfg.num_generations, cfg.model
(4, 'tiny')

A bad value raises `ValueError` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from course_utils.env import default_profile, run_dir
from course_utils.files import atomic_write

PROFILES = ("smoke", "cpu", "gpu", "tpu")
MODELS = ("tiny", "gemma3-270m", "gemma3-1b-it")
PARAM_DTYPES = ("bfloat16", "float32")
KL_MODES = ("low_var_kl", "kl", "mse_kl")
CONTROLS = (None, "lr0", "shuffle")
DIFFICULTIES = ("easy", "medium", "hard")
# How GRPO's per-token loss is averaged (Tunix 0.1.7's `aggregate_loss`), and how advantages are
# computed from a group's rewards (Tunix's registered estimators).
LOSS_AGG_MODES = ("sequence-mean-token-mean", "token-mean", "sequence-mean-token-scale",
                  "seq-mean-token-sum", "sequence-mean-token-sum-norm")
ADVANTAGE_ESTIMATORS = ("grpo", "drgrpo", "rloo")
GRPO_LOSS_FNS = ("grpo", "grpo_completion_head")
DATA_SOURCES = ("auto", "synthetic", "local", "huggingface", "kaggle")
REWARD_WEIGHT_FIELDS = (
    "format_reward_weight",
    "coherence_reward_weight",
    "correctness_reward_weight",
    "efficiency_reward_weight",
)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """All settings of one course run. Introduced in part 02; every later part reads it.

    The defaults are Gemma 3 1B-it with the official Tunix notebook's values; the `tpu` profile
    revises the recipe. Symbols in comments are the ones part 02 explains.
    """

    profile: str = "tpu"
    model: str = "gemma3-1b-it"  # "tiny" (random, 2 layers), "gemma3-270m", "gemma3-1b-it"
    # Kaggle handle of gemma3-1b-it (part 04): the Flax/Orbax checkpoint, or the transformers
    # safetensors variant "google/gemma-3/transformers/gemma-3-1b-it"; both load through Tunix.
    kaggle_handle: str = "google/gemma-3/flax/gemma3-1b-it"
    param_dtype: str = "bfloat16"  # weights' dtype (part 04): bfloat16 | float32 (CPU: faster, exact)
    # Keep only the embedding rows of the course's vocabulary (part 04, course_utils.vocab): the
    # 270M's output layer shrinks 8x; export still writes the full-vocabulary model.
    vocab_trim: bool = False
    seed: int = 42

    # --- data --------------------------------------------------------------------------------
    data_source: str = "auto"  # auto | synthetic | local | huggingface | kaggle
    train_examples: int | None = None  # None = the whole training split
    val_examples: int = 200
    eval_examples: int | None = None  # None = all 1,319 GSM8K test problems

    # --- GRPO (part 02) -------------------------------------------------------------------------
    num_generations: int = 4  # G: completions sampled per prompt
    beta: float = 0.08  # β: weight of the KL penalty to the reference model
    epsilon: float = 0.2  # ε: clip range of the probability ratio
    num_iterations: int = 1  # μ: policy updates per batch of rollouts
    kl_loss_mode: str = "low_var_kl"  # KL estimator: low_var_kl (k3, as in GRPO) | kl | mse_kl
    # Tunix policy loss (part 06): "grpo" (Tunix's own) or "grpo_completion_head" (the same loss,
    # with the output layer applied only at completion positions: course_utils.policy_loss).
    grpo_loss_fn: str = "grpo"
    grpo_reference: str = "sft"  # π_ref of the KL term: "sft" (the policy GRPO starts from) | "base"
    # Loss aggregation: Tunix's default averages each reply's tokens, then the replies (a long
    # wrong reply costs less per token); "token-mean" (DAPO) weighs every token alike,
    # "sequence-mean-token-scale" (Dr. GRPO) divides by the generation limit.
    loss_agg_mode: str = "sequence-mean-token-mean"
    # Advantage A from the group's rewards: "grpo" (r − mean) / std, "drgrpo" r − mean (no
    # std scaling of small differences), "rloo" r − mean of the other G − 1.
    advantage_estimator: str = "grpo"
    # Put <end_of_turn> into the completion of every reply that stopped by itself, so the stop
    # token is trained with the reply's advantage (Tunix's rollout drops it otherwise).
    learn_to_stop: bool = True
    max_steps: int = 500  # GRPO optimiser steps
    # Curriculum (part 06): shares of the GRPO steps on easy, then medium problems; hard gets the rest.
    curriculum_easy_share: float = 1 / 3
    curriculum_medium_share: float = 1 / 3

    # --- batches: global prompts per step, split into mini (one update) and micro (accumulation)
    # Rollouts and log-probs run a whole mini-batch at once; only the update's backward pass runs
    # micro-batch by micro-batch (its activations are what bound memory).
    global_batch_size: int = 4
    mini_batch_size: int = 4
    micro_batch_size: int = 4

    # --- optimiser (AdamW with warm-up + cosine decay, global-norm clipping) ---------------------
    learning_rate: float = 3e-6  # η
    adam_b1: float = 0.9
    adam_b2: float = 0.99
    weight_decay: float = 0.1
    warmup_ratio: float = 0.1  # share of max_steps spent warming up
    max_grad_norm: float = 0.1

    # --- LoRA (part 04) -------------------------------------------------------------------------
    lora_rank: int = 8  # r
    lora_alpha: float = 16.0  # α; the update is scaled by α / r

    # --- lengths (tokens) and sampling -----------------------------------------------------------
    max_prompt_length: int = 256
    max_generation_length: int = 512
    cache_size: int = 1024  # KV cache; must hold prompt + generation
    temperature: float = 0.9  # τ
    top_p: float = 1.0
    top_k: int = 50

    # --- rewards (part 03): weights of the composite reward, summing to 1 -----------------------
    format_reward_weight: float = 0.25
    coherence_reward_weight: float = 0.20
    correctness_reward_weight: float = 0.55
    efficiency_reward_weight: float = 0.0
    anneal_reward_weights: bool = True  # w_trace 0.45→0.25, w_correct 0.40→0.60 over training
    # Annealing end points (part 03): trace = format + coherence (split 0.25 : 0.20 as above),
    # correct = correctness; the rest, 1 − trace − correct − efficiency (0.15), pays calibration.
    anneal_trace_weight_start: float = 0.45
    anneal_trace_weight_end: float = 0.25
    anneal_correct_weight_start: float = 0.40
    anneal_correct_weight_end: float = 0.60
    verbosity_penalty: float = 0.1  # subtracted × verbosity (0–1) for over-long or looping replies

    # --- which prompts GRPO trains on (part 06): pass-rate filtering with the SFT policy -------
    # k replies per candidate at the rollout temperature; keep prompts solved sometimes, not always.
    filter_prompts: bool = False  # train on the filtered prompts (else the curriculum over all)
    filter_samples_k: int = 8  # k samples per candidate prompt
    filter_candidates: int = 256  # candidate prompts measured
    filter_difficulties: str = "easy,medium,hard"  # comma-separated difficulties the candidates come from
    filter_pass_rate_min: float = 0.1  # keep min <= p̂ <= max (k = 8: 1 to 7 of 8 right)
    filter_pass_rate_max: float = 0.9
    # A control run through the same code (part 06 proof): None | "lr0" (learning rate 0) |
    # "shuffle" (rewards shuffled within each group: the update sees no real signal).
    control: str | None = None

    # --- SFT warm-start (part 06, stage 1) ------------------------------------------------------
    sft_steps: int = 200
    sft_learning_rate: float = 2e-4
    sft_batch_size: int = 8
    sft_max_length: int = 512

    # --- evaluation (part 07) -------------------------------------------------------------------
    eval_batch_size: int = 32
    eval_samples_k: int = 4  # k for pass@k / maj@k with sampled decoding
    eval_sampled_examples: int | None = 256  # test problems that also get k sampled replies; None = all

    # --- checkpoints and time --------------------------------------------------------------------
    checkpoint_every: int = 50  # steps between Orbax checkpoints
    keep_checkpoints: int = 3
    time_budget_minutes: float | None = 8.5 * 60  # stop cleanly before Kaggle's 9-hour limit

    def __post_init__(self) -> None:
        _validate(self)

    # --- constructors ---------------------------------------------------------------------------
    @classmethod
    def for_profile(cls, name: str, **overrides: Any) -> "TrainingConfig":
        """The configuration of profile `name` (smoke | cpu | gpu | tpu), plus `overrides`."""
        if name not in PROFILES:
            raise ValueError(
                f"profile={name!r} is unknown; choose one of {', '.join(PROFILES)} "
                "(set COURSE_PROFILE or pass it to TrainingConfig.for_profile)."
            )
        changes = {**_PROFILE_CHANGES[name], "profile": name, **overrides}
        _check_field_names(changes)
        return dataclasses.replace(cls(), **changes)

    @classmethod
    def from_env(cls, **overrides: Any) -> "TrainingConfig":
        """The profile named by `COURSE_PROFILE`, or the one the hardware suggests."""
        name = os.environ.get("COURSE_PROFILE", "").strip().lower() or default_profile()
        return cls.for_profile(name, **overrides)

    # --- derived values ---------------------------------------------------------------------------
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
        data = self.to_dict()
        if fields is not None:
            data = {k: data[k] for k in fields}
        text = json.dumps(data, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def stage_fields(self, stage: str) -> tuple[str, ...]:
        """The fields that shape what a training stage ("sft" or "grpo") learns (part 06).

        A run may continue in a later session after any other field changed (the time budget,
        checkpoint interval, evaluation sizes), but not after one of these did.
        """
        if stage == "sft":
            return SFT_FIELDS
        if stage == "grpo":
            return tuple(f.name for f in dataclasses.fields(self) if f.name not in SESSION_FIELDS)
        raise ValueError(f"stage={stage!r} is unknown; use 'sft' or 'grpo'")

    def evaluation_fields(self, name: str) -> tuple[str, ...]:
        """The fields an evaluation of model `name` depends on (parts 06, 07): the baseline only
        on decoding, data and reward settings; "sft" also on SFT's; anything else on all."""
        known = {f.name for f in dataclasses.fields(self)}
        fields = tuple(f for f in EVAL_FIELDS if f in known)
        if name == "baseline":
            return fields
        if name == "sft":
            return tuple(dict.fromkeys(fields + SFT_FIELDS))
        return tuple(f.name for f in dataclasses.fields(self))

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
            raise FileNotFoundError(
                f"No configuration at {path}. Run part 02 (02_grpo_config) first, or build one "
                "with TrainingConfig.from_env()."
            ) from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); delete it and re-run part 02.") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object of config fields, not {type(data).__name__}.")
        _check_field_names(data)
        return cls(**data)


# Fields that may change between two sessions of one run (see TrainingConfig.stage_fields).
SESSION_FIELDS = (
    "profile", "time_budget_minutes", "checkpoint_every", "keep_checkpoints",
    "eval_examples", "eval_batch_size", "eval_samples_k",
)
# What decides the training examples (data.load_splits): the validation draw comes first, so
# another `val_examples` shifts the train split. Part of SFT_FIELDS, hence of every stage's.
DATA_FIELDS = ("seed", "data_source", "train_examples", "val_examples")
# What the SFT stage depends on; GRPO depends on everything but SESSION_FIELDS.
SFT_FIELDS = (
    "model", "param_dtype", "vocab_trim", *DATA_FIELDS, "lora_rank", "lora_alpha",
    "adam_b1", "adam_b2", "weight_decay", "sft_steps", "sft_learning_rate", "sft_batch_size",
    "sft_max_length",
)

# What an evaluation of the untrained model depends on (see TrainingConfig.evaluation_fields).
EVAL_FIELDS = (
    "model", "param_dtype", "vocab_trim", "kaggle_handle", "seed", "data_source", "train_examples", "val_examples",
    "eval_examples", "max_prompt_length", "max_generation_length", "cache_size", "temperature", "top_p",
    "top_k", "eval_samples_k", "eval_sampled_examples", *REWARD_WEIGHT_FIELDS, "verbosity_penalty",
    # the composite reward is scored with the last GRPO step's weights (rewards.final_weights)
    "anneal_reward_weights", "anneal_trace_weight_end", "anneal_correct_weight_end",
)

# What each profile changes from the full-size defaults. Nothing else differs.
_PROFILE_CHANGES: dict[str, dict[str, Any]] = {
    # The full run's recipe, revised from TrainingConfig's defaults, which keep the Tunix Gemma
    # notebook's lr 3e-6, β 0.08, ε 0.2, grad clip 0.1 (not its G 2, LoRA r 64, 3,364 steps); a
    # public reproduction of those found format gains, not accuracy (google/tunix issue 688:
    # accuracy 53 → 49 %, format 65 → 91 %). Sources: ../shared/notes/grpo-signal-facts.md, README "Rehearsed at full size".
    # UNVALIDATED until a TPU run: no value here has been measured on Gemma 3 1B; the memory
    # figures are XLA CPU compiles on 8 simulated devices.
    "tpu": dict(
        # β = 0: no KL term and no reference model. Tunix skips the reference forward at beta 0.0
        # and RLCluster accepts reference=None (training.make_reference returns None); DAPO and
        # nanochat train without KL. Saves the reference's copy of the weights (0.24 GiB per chip).
        beta=0.0,
        # DAPO's token-mean loss (every token weighs alike: no discount for long wrong replies) and
        # Dr. GRPO's advantages r − mean (no std scaling of tiny heuristic-reward differences,
        # arXiv 2503.20783), as the cpu profile uses; from the literature, not measured on the 1B.
        loss_agg_mode="token-mean",
        advantage_estimator="drgrpo",
        # LoRA Without Regret (Thinking Machines): the best LoRA learning rate is ≈ 10× full
        # fine-tuning's; 10 × the official notebook's 3e-6 (the cpu profile's 270M also uses 3e-5).
        learning_rate=3e-5,
        # Global-norm clipping at 1.0, as the cpu profile (the notebook's 0.1 with a 10× larger
        # learning rate would clip nearly every step); not measured on the 1B.
        max_grad_norm=1.0,
        # G = 8: a group carries a correctness signal with probability 1 − pᴳ − (1 − p)ᴳ:
        # 0.83 at p = 0.2 with G = 8, 0.59 with G = 4.
        num_generations=8,
        # Memory (python -m tools.rehearse: XLA's compiled memory analysis of Tunix's train
        # step for Gemma 3 1B in bf16 on 8 simulated CPU devices, mesh (2, 4)): a micro batch of
        # 16 sequences of 256 + 512 tokens (4 prompts × G = 4) needs 15.76 GiB per device, 16.00
        # GiB with β > 0's reference copy: all of a 16 GiB v5e chip. One prompt's G = 8 sequences
        # need 8.61 GiB (SFT step: 7.65 GiB), leaving 46 % of the chip for the runtime and
        # rollouts; two prompts (16 sequences) would need 16 GiB again. So micro batch 1: the mini
        # batch of 4 prompts is 4 accumulated micro-batches (the same update in 4 passes).
        micro_batch_size=1,
        # Train on prompts the SFT policy solves sometimes (1 to 7 of k = 8): balanced difficulty
        # filtering (arXiv 2504.03380: +12 % in under half the steps); 1024 candidates so that
        # 500 steps × 4 prompts cycle a few hundred kept prompts, not a handful.
        filter_prompts=True,
        filter_candidates=1024,
        # Correctness-led reward (DAPO, nanochat, tenstorrent; binary correctness beat partial
        # credit on a 0.5B model): correctness 0.70 → 0.85 of the reward, format + coherence
        # 0.25 → 0.10 only to keep answers parseable, calibration 0.05.
        format_reward_weight=0.15,
        coherence_reward_weight=0.05,
        correctness_reward_weight=0.80,
        anneal_trace_weight_start=0.25,
        anneal_trace_weight_end=0.10,
        anneal_correct_weight_start=0.70,
        anneal_correct_weight_end=0.85,
    ),
    "gpu": {},
    "cpu": dict(
        model="gemma3-270m",
        param_dtype="float32",
        vocab_trim=True,
        grpo_loss_fn="grpo_completion_head",
        data_source="synthetic",  # the offline default; "auto" reads GSM8K
        train_examples=2000,
        val_examples=50,
        eval_examples=200,
        max_steps=14,  # part 06 cold in under 30 minutes on 2 cores (~40 s per step)
        curriculum_easy_share=0.6,  # the 270M solves easy problems sometimes: that is where groups differ
        curriculum_medium_share=0.25,
        global_batch_size=2,
        mini_batch_size=2,
        micro_batch_size=1,  # the update in two halves of G sequences: half the activations (16 GB laptop)
        beta=0.2,  # β: a firmer anchor to the SFT policy (measured: keeps format ≥ 90 %)
        # Dr. GRPO advantages and DAPO token-mean loss: chosen from the literature for the length
        # bias (issue 11). Measured only inside the proof run (with β 0, η 5e-5: no gain; README).
        loss_agg_mode="token-mean",
        advantage_estimator="drgrpo",
        learning_rate=3e-5,
        warmup_ratio=0.1,
        max_grad_norm=1.0,
        lora_rank=16,
        lora_alpha=32.0,
        max_prompt_length=144,
        max_generation_length=160,
        cache_size=304,
        temperature=0.7,  # τ: measured after SFT, easy rollouts 19 % right at 0.7, 14 % at 0.9
        sft_steps=40,
        sft_batch_size=4,
        sft_max_length=224,
        eval_batch_size=16,
        eval_sampled_examples=32,
        checkpoint_every=10,
        time_budget_minutes=120.0,
    ),
    "smoke": dict(
        model="tiny",
        param_dtype="float32",
        vocab_trim=True,
        grpo_loss_fn="grpo_completion_head",
        data_source="synthetic",
        train_examples=32,
        val_examples=8,
        eval_examples=8,
        max_steps=4,
        global_batch_size=1,
        mini_batch_size=1,
        micro_batch_size=1,
        learning_rate=1e-3,
        max_prompt_length=160,
        max_generation_length=16,
        cache_size=176,
        top_k=8,
        sft_steps=3,
        sft_batch_size=2,
        sft_max_length=192,
        eval_batch_size=4,
        eval_samples_k=2,
        checkpoint_every=2,
        time_budget_minutes=10.0,
    ),
}


def _check_field_names(data: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown config field(s) {unknown}; the known fields are listed in "
            "course_utils.config.TrainingConfig (check the spelling)."
        )


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{field}={value!r} is not allowed: {allowed}.")


# Validation tables: the allowed values, booleans, integers (minimum; None allowed when listed in
# OPTIONAL) and numbers ((low, high], or [low, high]) of each field.
CHOICES = {
    "profile": PROFILES, "model": MODELS, "param_dtype": PARAM_DTYPES, "grpo_reference": ("sft", "base"),
    "kl_loss_mode": KL_MODES, "loss_agg_mode": LOSS_AGG_MODES, "advantage_estimator": ADVANTAGE_ESTIMATORS,
    "grpo_loss_fn": GRPO_LOSS_FNS, "data_source": DATA_SOURCES,
}
BOOLEANS = ("filter_prompts", "learn_to_stop", "vocab_trim", "anneal_reward_weights")
INTEGERS = {
    "seed": 0, "train_examples": 1, "val_examples": 0, "eval_examples": 1, "num_generations": 2,
    "num_iterations": 1, "max_steps": 1, "global_batch_size": 1, "mini_batch_size": 1, "micro_batch_size": 1,
    "lora_rank": 1, "max_prompt_length": 1, "max_generation_length": 1, "cache_size": 1, "top_k": 1,
    "sft_steps": 0, "checkpoint_every": 1, "sft_batch_size": 1, "sft_max_length": 1, "eval_batch_size": 1,
    "keep_checkpoints": 1, "eval_samples_k": 1, "filter_samples_k": 1, "filter_candidates": 1,
    "eval_sampled_examples": 0,
}
OPEN_LOW = ("epsilon", "learning_rate", "sft_learning_rate", "max_grad_norm", "lora_alpha", "top_p",
            "time_budget_minutes")
NUMBERS = {
    "beta": 10.0, "epsilon": 1.0, "learning_rate": 1.0, "sft_learning_rate": 1.0, "adam_b1": 1.0, "adam_b2": 1.0,
    "weight_decay": 1.0, "warmup_ratio": 1.0, "max_grad_norm": 1e6, "lora_alpha": 1e6, "temperature": 10.0,
    "top_p": 1.0, "time_budget_minutes": 1e6, "filter_pass_rate_min": 1.0, "filter_pass_rate_max": 1.0,
    **dict.fromkeys(REWARD_WEIGHT_FIELDS, 1.0), "verbosity_penalty": 1.0, "curriculum_easy_share": 1.0,
    "curriculum_medium_share": 1.0, "anneal_trace_weight_start": 1.0, "anneal_correct_weight_start": 1.0,
    "anneal_trace_weight_end": 1.0, "anneal_correct_weight_end": 1.0,
}
OPTIONAL = ("train_examples", "eval_examples", "eval_sampled_examples", "time_budget_minutes")


def _validate(c: TrainingConfig) -> None:
    """Check every field; the first bad one raises ValueError(field, value, what is allowed)."""
    for name, allowed in CHOICES.items():
        if getattr(c, name) not in allowed:
            _fail(name, getattr(c, name), f"choose one of {', '.join(allowed)}")
    if not isinstance(c.kaggle_handle, str) or not any(f"/{k}/" in c.kaggle_handle for k in ("flax", "transformers")):
        _fail("kaggle_handle", c.kaggle_handle, "use a Kaggle model handle owner/model/flax|transformers/variant, e.g. google/gemma-3/flax/gemma3-1b-it")
    if c.control not in CONTROLS:
        _fail("control", c.control, "choose None, 'lr0' (learning rate 0) or 'shuffle' (rewards shuffled within groups)")
    chosen = [d.strip() for d in c.filter_difficulties.split(",")] if isinstance(c.filter_difficulties, str) else None
    if not chosen or any(d not in DIFFICULTIES for d in chosen):
        _fail("filter_difficulties", c.filter_difficulties, "a comma-separated list of easy, medium, hard, e.g. 'easy,medium'")
    for name in BOOLEANS:
        if not isinstance(getattr(c, name), bool):
            _fail(name, getattr(c, name), "must be True or False")
    for name, minimum in INTEGERS.items():
        v, optional = getattr(c, name), name in OPTIONAL
        if not (optional and v is None) and (isinstance(v, bool) or not isinstance(v, int) or v < minimum):
            _fail(name, v, f"must be an integer >= {minimum}" + (" or None" if optional else ""))
    for name, high in NUMBERS.items():
        v, optional, open_low = getattr(c, name), name in OPTIONAL, name in OPEN_LOW
        if optional and v is None:
            continue
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not (ok and (v > 0.0 if open_low else v >= 0.0) and v <= high):
            bracket = "(" if open_low else "["
            _fail(name, v, f"must be a finite number in {bracket}0.0, {high}]" + (" or None" if optional else ""))
    if c.filter_pass_rate_min > c.filter_pass_rate_max:
        _fail("filter_pass_rate_min", c.filter_pass_rate_min, f"must be <= filter_pass_rate_max={c.filter_pass_rate_max}")
    total = sum(getattr(c, n) for n in REWARD_WEIGHT_FIELDS)
    if abs(total - 1.0) > 1e-6:
        _fail("reward weights", {n: getattr(c, n) for n in REWARD_WEIGHT_FIELDS},
              f"they must sum to 1 (within 1e-6) but sum to {total:.6g}")
    shares = c.curriculum_easy_share + c.curriculum_medium_share
    if shares > 1.0 + 1e-9:
        _fail("curriculum_medium_share", c.curriculum_medium_share, "curriculum_easy_share + curriculum_medium_share "
              f"must be <= 1 (hard gets the rest) but is {shares:.6g}")
    for end in ("start", "end"):
        trace, correct = f"anneal_trace_weight_{end}", f"anneal_correct_weight_{end}"
        used = getattr(c, trace) + getattr(c, correct) + c.efficiency_reward_weight
        if used > 1.0 + 1e-6:
            _fail(trace, getattr(c, trace), f"{trace} + {correct} + efficiency_reward_weight must be <= 1 "
                  f"(the rest pays calibration) but is {used:.6g}")
    if c.global_batch_size % c.mini_batch_size:
        _fail("global_batch_size", c.global_batch_size, f"must be a multiple of mini_batch_size={c.mini_batch_size}")
    if c.mini_batch_size % c.micro_batch_size:
        _fail("mini_batch_size", c.mini_batch_size, f"must be a multiple of micro_batch_size={c.micro_batch_size}")
    tokens = c.max_prompt_length + c.max_generation_length
    if tokens > c.cache_size:
        _fail("cache_size", c.cache_size, f"must hold max_prompt_length + max_generation_length = "
              f"{c.max_prompt_length} + {c.max_generation_length} = {tokens} tokens; raise cache_size or shorten them")


CONFIG_FILE = "config.json"
GSM8K_TEST_SIZE = 1319

# ASSUMED, not measured: no TPU was available while writing this. Replace with figures from a
# real run (e.g. seconds per step from part 06's metrics) via `measured=` / `estimate --grpo-step`.
ASSUMED_SECONDS = {
    "grpo_step": 15.0,  # v5e-8: G × global_batch_size rollouts of ≤ 512 tokens + policy/ref passes
    "sft_step": 1.0,  # v5e-8: LoRA step on sft_batch_size × sft_max_length tokens
    "eval_batch": 12.0,  # v5e-8: one batch of eval_batch_size prompts, ≤ 512 new tokens
    "notebook_overhead": 600.0,  # per session: TPU VM start, pip installs, model load, compiles
}


def load_run_config(profile: str | None = None, **overrides: Any) -> TrainingConfig:
    """The configuration a part should use: part 02's saved JSON for this profile, else fresh.

    Every notebook from part 03 on starts with this, so it runs cold. `profile` defaults to
    `COURSE_PROFILE` or the hardware's choice; `overrides` (a notebook's parameters) win.
    """
    name = (profile or os.environ.get("COURSE_PROFILE", "").strip().lower() or default_profile())
    path = run_dir(name) / CONFIG_FILE
    if path.exists():
        config = TrainingConfig.load(path)
        if config.profile != name:
            raise ValueError(
                f"{path} holds profile {config.profile!r}, not {name!r}; delete it or point "
                "COURSE_RUN_DIR at another folder."
            )
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
