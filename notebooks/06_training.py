# %% [markdown]
# # Part 06 · Training: SFT warm-start, then GRPO
# [![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/06_training.ipynb) [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/06_training.ipynb)
#
# This is where the model learns. A short supervised warm-up (SFT) teaches the answer format
# and a habit of writing steps; then GRPO improves what the rewards of part 03 pay for:
# correct answers, in the format, with reasoning that holds together. Both stages checkpoint
# as they go, so this notebook can be stopped (or killed by Kaggle's 9-hour limit) and simply
# run again: it continues where it stopped.
#
# **Objectives**
# - measure the untrained model on held-out problems (the baseline);
# - run LoRA SFT with Tunix's `PeftTrainer` and watch its loss;
# - run GRPO with Tunix's `RLCluster` + `GRPOLearner`: curriculum, annealed reward weights,
#   a fresh sampling seed each step, checkpoints and a time budget;
# - read the learning curves, and compare base → SFT → GRPO with confidence intervals.
#
# **Prerequisites**: parts 02 (configuration), 03 (data and rewards) and 04 (model and LoRA).
# Hardware: any profile. `smoke` runs in about a minute, `cpu` (real Gemma 3 270M) takes a
# while on a laptop (see the timings printed below), `tpu` is the full run on Kaggle.

# %%
# Make `course_utils` importable: installed, this repository or a Kaggle input, else pip-install it pinned.
import importlib, importlib.util, os, pathlib, subprocess, sys
COURSE_UTILS_URL = os.environ.get("COURSE_UTILS_PIP") or "git+https://github.com/gemma3-grpo-course/gemma3-grpo-course@v0.1.0"
here = pathlib.Path.cwd()
kaggle = [p for g in ("*", "*/*", "*/*/*") for p in pathlib.Path("/kaggle/input").glob(g)] + [pathlib.Path("/kaggle/usr/lib")]
root = next((p for p in [here, *here.parents, *kaggle] if (p / "course_utils" / "__init__.py").is_file()), None)
if importlib.util.find_spec("course_utils"):
    print("course_utils: installed package")
elif root is not None:
    sys.path.insert(0, str(root))
    print("course_utils: from", root)
else:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", COURSE_UTILS_URL], check=True)
    importlib.invalidate_caches()
    print("course_utils: pip-installed from", COURSE_UTILS_URL)

# %%
from course_utils.install import ensure_packages

ensure_packages()

# %% tags=["parameters"]
PROFILE = None  # smoke | cpu | gpu | tpu; None = COURSE_PROFILE or the hardware's choice
SFT_STEPS = None  # SFT optimiser steps; None = the profile's (cpu: 40, tpu: 200)
GRPO_STEPS = None  # GRPO optimiser steps (max_steps); None = the profile's (cpu: 14, tpu: 500)
TIME_BUDGET_MINUTES = None  # stop cleanly with a checkpoint after this long; None = the profile's
EVAL_PROBLEMS = None  # held-out problems for the before/after table; None = config.eval_examples
ALLOW_CONFIG_CHANGE = False  # continue a run even if its training settings changed since

# %% [markdown]
# ## What you need from the earlier parts
#
# The configuration part 02 saved (or a fresh one), the data splits of part 03 and the model
# of part 04 with LoRA adapters. If this run already has checkpoints, the trainers below pick
# them up by themselves.

# %%
import jax

from course_utils.config import load_run_config
from course_utils.env import run_dir
from course_utils.model import model_mesh

knobs = {"sft_steps": SFT_STEPS, "max_steps": GRPO_STEPS, "time_budget_minutes": TIME_BUDGET_MINUTES}
config = load_run_config(PROFILE, **{k: v for k, v in knobs.items() if v is not None})
RUN_DIR = run_dir(config.profile)
mesh = model_mesh(config)  # (2, 4) on a TPU v5e-8, (1, 1) on a CPU (part 01)
jax.set_mesh(mesh)

# %%
from course_utils.data import load_splits
from course_utils.lora import apply_lora
from course_utils.model import load_model
from course_utils.training import Deadline

loaded = load_model(config, mesh)
tokenizer, model_config = loaded.tokenizer, loaded.model_config
actor = apply_lora(loaded.model, config, mesh)  # the policy we train; shares the base weights (part 04)
splits = load_splits(config)
train, held_out = splits["train"], splits["test"][: EVAL_PROBLEMS or config.eval_examples]
budget = Deadline(config.time_budget_minutes)  # one budget for the whole notebook
print(f"{len(train)} training problems, {len(held_out)} held-out problems; budget {config.time_budget_minutes} min")

# %% [markdown]
# ## 1. The baseline
#
# Before training, the model is scored on held-out problems it will never train on, with
# greedy decoding (always the most likely next token). Results are cached in the run
# directory, so a re-run does not pay for them again.

# %%
from course_utils.evaluation import evaluate_or_reuse, find_checkpoint, markdown_table, paired_bootstrap

base = evaluate_or_reuse("baseline", loaded, config, held_out, RUN_DIR)
print(markdown_table([base], ["format", "strict"]))

# %% [markdown]
# ## 2. Stage 1: SFT warm-start
#
# A base model rarely writes `<reasoning>…</reasoning><answer>…</answer>` by itself, and GRPO
# cannot reward a format it never samples. So we first show it worked solutions in the course
# format (GSM8K's steps, or the generator's, become the reasoning). Only the answer tokens
# carry loss: the prompt is masked out. Here is one training target:

# %%
from course_utils.data import format_solution

print(format_solution(train[0]))

# %% [markdown]
# **The optimiser.** AdamW after clipping the gradient's global norm at 1.0. The learning
# rate warms up linearly over the first tenth of the steps, then decays along a cosine
# (`learning_rate_schedule` shifts optax's schedule by one update, so the first update does
# not run at rate 0). LoRA wants larger steps than full fine-tuning (≈ 10×, "LoRA Without
# Regret"); the cell prints how SFT's rate compares with GRPO's in this configuration.

# %% tags=["sft_optimizer"]
import optax

from course_utils.training import learning_rate_schedule

sft_schedule = learning_rate_schedule(config.sft_learning_rate, config.sft_steps, max(1, config.sft_steps // 10))
sft_optimizer = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.adamw(sft_schedule, b1=config.adam_b1, b2=config.adam_b2, weight_decay=config.weight_decay),
)
print(f"SFT peak learning rate {config.sft_learning_rate:g}: {config.sft_learning_rate / config.learning_rate:.3g}× GRPO's")

# %% [markdown]
# **The trainer.** Tunix's `PeftTrainer` trains the LoRA parameters only (the model has LoRA
# layers, so it holds its optimiser over `nnx.LoRAParam`). Its `TrainingConfig` says how many
# steps, where Orbax saves a checkpoint every `checkpoint_every` steps (the newest
# `keep_checkpoints` kept: the trainer restores the newest when it is built), and where the
# metrics go: TensorBoard, and the course's `metrics_sft.jsonl` (`StepMetrics`).
# `sft_model_inputs` gives the model positions and a causal mask that skip the padding.
# `prepare_stage` first refuses to continue a run whose SFT settings changed.

# %% tags=["sft_trainer"]
import orbax.checkpoint as ocp
from tunix.sft import peft_trainer

from course_utils.metrics import StepMetrics
from course_utils.training import checkpoint_dir, prepare_stage, sft_model_inputs, update_learning_rate

prepare_stage(RUN_DIR, "sft", config, ALLOW_CONFIG_CHANGE)
sft_metrics = StepMetrics(RUN_DIR, "sft", lambda step: {"learning_rate": update_learning_rate(sft_schedule, step)})
sft_config = peft_trainer.TrainingConfig(
    max_steps=config.sft_steps, eval_every_n_steps=10**9, pbar_description="SFT",
    checkpoint_root_directory=str(checkpoint_dir(RUN_DIR, "sft")),
    checkpointing_options=ocp.CheckpointManagerOptions(save_interval_steps=config.checkpoint_every, max_to_keep=config.keep_checkpoints),
    metrics_logging_options=sft_metrics.options())
sft_trainer = peft_trainer.PeftTrainer(actor, sft_optimizer, sft_config).with_gen_model_input_fn(sft_model_inputs)

# %% [markdown]
# The session's budget also has to cover the two evaluations after SFT: they are timed from
# the baseline's, and kept out of SFT's share.

# %%
eval_seconds = base.settings.get("seconds_greedy", 0) + base.settings.get("seconds_sampled", 0)
eval_minutes = 1.25 * eval_seconds / 60  # with a margin: the replies' lengths vary
print(f"keeping {2 * eval_minutes:.1f} min of the budget for the SFT and final evaluations")
deadline = budget.reserve(2 * eval_minutes)

# %% [markdown]
# `run_sft` feeds the trainer padded batches in a fixed, seeded order, skips the ones a
# restored checkpoint already trained, stops cleanly at the deadline, and makes every
# checkpoint carry the course's sidecar (stage, config fingerprint, metrics so far).

# %% tags=["sft"]
from course_utils.training import run_sft, sft_batches

sft = run_sft(sft_trainer, sft_batches(train, tokenizer, config), config, sft_metrics, deadline)
print(sft.message())

# %%
from IPython.display import Image, display

from course_utils.plots import plot_sft_loss

display(Image(str(plot_sft_loss(RUN_DIR / "metrics_sft.jsonl", RUN_DIR / "sft_loss.png"))))

# %% [markdown]
# ## 3. After SFT
#
# Same problems, same greedy decoding. The format should now be there; correctness is what
# GRPO has to improve.

# %%
from course_utils.evaluation import evaluate_or_reuse, find_checkpoint, markdown_table

sft_eval = evaluate_or_reuse("sft", actor, config, held_out, RUN_DIR, loaded=loaded,
                             checkpoint=find_checkpoint(RUN_DIR, "sft", search_kaggle_inputs=False))
print(markdown_table([base, sft_eval], ["format", "strict"]))

# %% [markdown]
# ## 4. Stage 2: GRPO
#
# Each step takes a batch of questions, samples G answers to each with a new seed, scores
# them with the composite reward, and moves the policy towards the answers that beat their
# group (part 02). The cells below build each piece Tunix needs, with this run's values.
#
# **The reference model.** The KL term anchors the policy to π_ref. With
# `grpo_reference="sft"` (default) π_ref is a frozen copy of the SFT policy GRPO starts from,
# as in DeepSeek-R1; `"base"` anchors to the untouched base model, as Tunix's Gemma example
# does (it has no SFT stage). With β = 0 there is no KL term, and no reference model at all.

# %% tags=["reference"]
from flax import nnx

from course_utils.lora import apply_lora, lora_state

if config.beta == 0:
    reference = None  # no KL term: Tunix computes no reference log-probabilities
elif config.grpo_reference == "base" or config.sft_steps == 0:
    reference = loaded.model
else:  # a second LoRA wrapper of the same base weights, holding a copy of the SFT LoRA weights
    reference = apply_lora(loaded.model, config, mesh)
    nnx.update(reference, lora_state(actor))
print("reference model:", "none (beta = 0)" if reference is None else config.grpo_reference)

# %% [markdown]
# ### Which prompts carry a signal
#
# GRPO's advantage compares the G replies to one prompt. If all G are right, or all wrong,
# correctness cannot tell them apart, and only format and style move the update. For a prompt
# the policy solves with probability p, the G replies disagree with probability
# 1 − pᴳ − (1 − p)ᴳ. With this configuration's G:

# %%
from course_utils.filtering import mixed_group_probability

for p in (0.02, 0.08, 0.2, 0.5, 0.9):
    print(f"p = {p:.2f}: {mixed_group_probability(p, config.num_generations):.2f} of groups carry a correctness signal (G = {config.num_generations})")

# %% [markdown]
# So the prompts worth training on are the ones the policy solves *sometimes*. With
# `filter_prompts=True`, `grpo_prompts` first samples `filter_samples_k` replies to each of
# `filter_candidates` candidates (of `filter_difficulties`) at the rollout temperature with the
# SFT policy, and keeps those with `filter_pass_rate_min ≤ p̂ ≤ filter_pass_rate_max` (Tunix
# 0.1.7 has no dynamic sampling, so this happens once, before training; the samples are cached
# in the run folder). Without it, every training problem whose prompt fits is used.

# %% tags=["prompts"]
from course_utils.training import grpo_prompts, prepare_stage

prepare_stage(RUN_DIR, "grpo", config, ALLOW_CONFIG_CHANGE)  # refuse changed GRPO settings mid-run
prompts = grpo_prompts(config, actor, tokenizer, train, RUN_DIR, model_config=model_config)
print(f"{len(prompts)} GRPO prompts (filter_prompts={config.filter_prompts})")

# %% [markdown]
# **The algorithm: `GRPOConfig`.** G replies per prompt; μ optimiser updates per batch of
# rollouts (`num_iterations`: at μ = 1 the ratio of new to old probabilities is exactly 1,
# so ε's clip never acts — part 02); β, the KL penalty's weight; how the per-token losses are
# aggregated (`loss_agg_mode`) and how advantages are computed (`advantage_estimator`: "grpo"
# divides by the group's std, "drgrpo" does not). `policy_loss_fn="grpo_completion_head"` is
# Tunix's GRPO loss with the output layer applied only to the completion
# (`course_utils.policy_loss`, registered in Tunix's function registry when imported).

# %% tags=["grpo_config"]
from tunix.rl.grpo.grpo_learner import GRPOConfig

import course_utils.policy_loss  # noqa: F401  registers "grpo_completion_head"

grpo_config = GRPOConfig(
    num_generations=config.num_generations, num_iterations=config.num_iterations,  # G, μ
    beta=config.beta, epsilon=config.epsilon, kl_loss_mode=config.kl_loss_mode,  # β, ε
    loss_agg_mode=config.loss_agg_mode, advantage_estimator=config.advantage_estimator,
    policy_loss_fn=config.grpo_loss_fn,
)
print(grpo_config)

# %% [markdown]
# **The rollout.** How replies are sampled: at most `max_generation_length` new tokens after
# a prompt of at most `max_prompt_length`, temperature, top-p and top-k, and the tokens that
# end a reply (Gemma's `<eos>` and `<end_of_turn>`). The batches below give it a new seed at
# every step; without one, every step would draw the same completions.

# %% tags=["rollout_config"]
from tunix.rl.rollout import base_rollout

from course_utils.tokenizer import EOS_TOKENS

rollout_config = base_rollout.RolloutConfig(
    max_tokens_to_generate=config.max_generation_length, max_prompt_length=config.max_prompt_length,
    kv_cache_size=config.cache_size, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
    eos_tokens=list(EOS_TOKENS),  # <eos>, <end_of_turn>
)

# %% [markdown]
# **The optimiser.** The same recipe as SFT's, with GRPO's own peak rate, warm-up
# (`warmup_ratio` of the steps) and clipping norm. The control run `control="lr0"` trains
# at rate 0: rollouts, rewards and updates all run, and the weights cannot move.

# %% tags=["grpo_optimizer"]
import optax

from course_utils.training import learning_rate_schedule

peak = 0.0 if config.control == "lr0" else config.learning_rate
grpo_schedule = learning_rate_schedule(peak, config.max_steps, config.warmup_steps)
grpo_optimizer = optax.chain(
    optax.clip_by_global_norm(config.max_grad_norm),
    optax.adamw(grpo_schedule, b1=config.adam_b1, b2=config.adam_b2, weight_decay=config.weight_decay),
)

# %% [markdown]
# **`RLTrainingConfig`.** The actor's optimiser and step count; the mini-batch of prompts
# one update learns from, accumulated over micro-batches to fit memory; rollouts and
# log-probabilities computed a whole mini-batch at once; checkpoints and metrics as for SFT
# (Tunix adds `actor/` below the checkpoint root). Each row of `metrics_grpo.jsonl` also
# records the step's curriculum phase and learning rate.

# %% tags=["rl_training_config"]
import orbax.checkpoint as ocp
from tunix.rl import rl_cluster as rl_cluster_lib

from course_utils.metrics import StepMetrics
from course_utils.training import checkpoint_dir, phase_of_step, update_learning_rate

grpo_metrics = StepMetrics(RUN_DIR, "grpo", lambda step: {
    "phase": phase_of_step(step, config), "learning_rate": update_learning_rate(grpo_schedule, step)})
rl_training_config = rl_cluster_lib.RLTrainingConfig(
    actor_optimizer=grpo_optimizer, max_steps=config.max_steps, eval_every_n_steps=10**9, pbar_description="GRPO",
    mini_batch_size=config.mini_batch_size, train_micro_batch_size=config.micro_batch_size,
    rollout_micro_batch_size=config.mini_batch_size, compute_logps_micro_batch_size=config.mini_batch_size,
    checkpoint_root_directory=str(checkpoint_dir(RUN_DIR, "grpo").parent),
    checkpointing_options=ocp.CheckpointManagerOptions(save_interval_steps=config.checkpoint_every, max_to_keep=config.keep_checkpoints),
    metrics_logging_options=grpo_metrics.options())

# %% [markdown]
# **`ClusterConfig` and `RLCluster`.** Which mesh each role runs on (actor, reference and
# rollout share one here), the rollout engine (Tunix's own "vanilla" sampler), and the two
# configs above; the cluster holds the models and the trainer.

# %% tags=["rl_cluster"]
from tunix.rl import rl_cluster as rl_cluster_lib

roles = rl_cluster_lib.Role
cluster_config = rl_cluster_lib.ClusterConfig(
    role_to_mesh={roles.ACTOR: mesh, roles.REFERENCE: mesh, roles.ROLLOUT: mesh},
    rollout_engine="vanilla", offload_to_cpu=False, training_config=rl_training_config, rollout_config=rollout_config)
rl_cluster = rl_cluster_lib.RLCluster(actor=actor, reference=reference, tokenizer=tokenizer, cluster_config=cluster_config)

# %% [markdown]
# **Learning to stop.** Tunix's rollout cuts the stop token off every reply, so the loss never
# sees the decision to stop, and a policy that rambles to the limit is not told it should have
# stopped. With `learn_to_stop`, `<end_of_turn>` goes back on every reply shorter than the
# limit (it stopped by itself); a reply that ran to the limit never stopped and stays as it is.

# %% tags=["stop_token"]
import numpy as np

from course_utils.tokenizer import END_OF_TURN_ID


def with_stop_tokens(output):  # a reply shorter than the limit stopped by itself
    output.tokens = [np.append(t, END_OF_TURN_ID).astype(t.dtype) if len(t) < config.max_generation_length
                     else np.asarray(t) for t in output.tokens]
    return output


if config.learn_to_stop:
    sample = rl_cluster.generate
    rl_cluster.generate = lambda *args, **kwargs: with_stop_tokens(sample(*args, **kwargs))

# %% [markdown]
# Each call of the rollout (`generate`), of the reference and old log-probabilities and of the
# update (`update_actor`) is timed, to show where a step's time goes (section 5).

# %% tags=["timings"]
import functools
import time

timings = {}  # seconds per call of each of the cluster's methods a GRPO step runs


def timed(phase, method, *args, **kwargs):
    began = time.perf_counter()
    out = method(*args, **kwargs)
    timings.setdefault(phase, []).append(time.perf_counter() - began)
    return out


for phase in ("generate", "get_ref_per_token_logps", "get_old_per_token_logps", "update_actor"):
    setattr(rl_cluster, phase, functools.partial(timed, phase, getattr(rl_cluster, phase)))

# %% [markdown]
# **The rewards.** Part 03's composite reward as Tunix reward functions
# (`fn(prompts, completions, answer, **batch) → one float per completion`, summed over the
# functions). Early on format and coherence weigh more, later correctness does; the weights
# follow the step whose rollouts are being scored (`reward_step`), and the last batch pays
# exactly the end weights. The control `control="shuffle"` permutes the rewards within each
# group: the update then sees rewards unrelated to its replies.

# %% tags=["reward_fns"]
from course_utils.rewards import make_reward_fns
from course_utils.training import grpo_batch_count, shuffle_within_groups

batches = grpo_batch_count(config)
updates_per_batch = (config.global_batch_size // config.mini_batch_size) * config.num_iterations


def reward_step():  # batch b is scored as step b × (max_steps − 1) / (batches − 1)
    batch = min(batches - 1, int(rl_cluster.actor_trainer.train_steps) // updates_per_batch)
    return float(config.max_steps - 1) if batches == 1 else batch * (config.max_steps - 1) / (batches - 1)


reward_fns = make_reward_fns(config, step_fn=reward_step)
if config.control == "shuffle":
    reward_fns = shuffle_within_groups(reward_fns, config.num_generations, config.seed)

# %% [markdown]
# **`GRPOLearner`.** The algorithm on the cluster: it samples, scores, computes advantages
# and updates. `grpo_step_metrics` adds the course's per-step numbers (reward components,
# rollout accuracy, the share of groups with mixed correctness, truncation) to Tunix's
# metrics, and the step's reward and accuracy to its progress bar.

# %% tags=["learner"]
from tunix.rl.grpo.grpo_learner import GRPOLearner

from course_utils.training import grpo_step_metrics

learner = GRPOLearner(rl_cluster=rl_cluster, algo_config=grpo_config, reward_fns=reward_fns,
                      metric_fns=[grpo_step_metrics(config, tokenizer, reward_fns, rl_cluster)])

# %% [markdown]
# GRPO may use the budget left less one evaluation (timed from the SFT evaluation).
# `run_grpo` orders the prompts by the curriculum (easy first, then medium, then hard:
# `curriculum_easy_share` and `curriculum_medium_share` of the run), skips the batches a
# restored checkpoint already trained, and stops cleanly at the deadline. The progress bar
# shows the time left, the loss and KL, and the reward and accuracy of the step's rollouts.

# %%
eval_seconds = sft_eval.settings.get("seconds_greedy", 0) + sft_eval.settings.get("seconds_sampled", 0)
deadline = budget.reserve(1.25 * eval_seconds / 60)

# %% tags=["grpo"]
from course_utils.training import run_grpo

grpo = run_grpo(learner, prompts, rollout_config, config, grpo_metrics, deadline, timings)
print(grpo.message())

# %% [markdown]
# ### Why the `cpu` profile uses these values
#
# Measured on a 2-core CPU with the real 270M (README, "Results on a CPU"):
#
# | knob | cpu value | why |
# |---|---|---|
# | SFT steps, η_SFT | 40, 2e-4 | the SFT loss flattens near 0.25 by step 25; LoRA wants ~10× a full fine-tune's rate |
# | prompts × G | 2 × 4 | a rollout costs about the same for 4 or 8 sequences on CPU, so 2 prompts give twice the samples almost free |
# | new tokens | 160 | at 128, medium and hard replies were cut off and lost their format |
# | β, η | 0.2, 3e-5 | with 0.08 and 5e-5 the policy drifted to over-long replies: format fell from 96 % to 84 % |
# | τ (rollouts) | 0.7 | after SFT, 4 samples of 16 easy problems were right 19 % of the time at 0.7, 14 % at 0.9; a run at 0.9 kept 87.5 % format, at 0.7 90.5 % |
# | GRPO steps | 14 | part 06 has 30 minutes on 2 cores; the three evaluations and SFT take about 17 |
# | curriculum | 60 / 25 / 15 % | only easy groups differ in correctness (hard: 0 of 39 solved after SFT); medium and hard steps pushed replies past the token limit |
#
# The full `tpu` run does not keep the values of Tunix's Gemma GRPO example notebook (η 3e-6,
# β 0.08, max_grad_norm 0.1, G 2: a public reproduction gained format, not accuracy, google/tunix
# issue 688). It takes what the cpu runs and the literature show: β 0 (no reference model),
# η 3e-5, clip 1.0, G 8, token-mean loss with Dr. GRPO advantages, prompts filtered by pass
# rate, a correctness-led reward (0.80), and one prompt per micro batch so the update fits a
# 16 GiB chip (README, "Rehearsed at full size"). None of it has run on a TPU yet.

# %% [markdown]
# ## 5. Learning curves
#
# **What not to read.** With μ = 1 (every profile) Tunix uses the current log-probabilities
# as the "old" ones, so every ratio is exactly 1 and the policy-gradient term's *value* is
# −(aggregated advantage). Advantages sum to zero within each group, so with the default
# aggregation (`sequence-mean-token-mean`) that value is exactly 0; with `token-mean` it is
# −Σᵢ Aᵢ·Lᵢ / Σᵢ Lᵢ, which only says whether the better replies were longer or shorter. Its
# *gradient* is what moves the policy. So the logged "policy loss" is β·KL (plus that length
# term): it rises as the policy moves away from π_ref, whether or not it gets better. This
# run's numbers:

# %%
from course_utils.metrics import read_metrics

for row in read_metrics(RUN_DIR / "metrics_grpo.jsonl")[-3:]:
    print(f"step {row['step']}: policy loss {row.get('policy_loss', 0):.3g}, β·KL {config.beta * row.get('kl', 0):.3g}")
print(f"loss_agg_mode={config.loss_agg_mode}, μ={config.num_iterations}, β={config.beta}")

# %% [markdown]
# **What carries the signal**, step by step: the share of groups whose correctness is mixed
# (the only groups correctness can teach from), the rollouts' accuracy, the reward, and the
# reply length with the share of truncated replies (dotted: a reply that never stops grows to
# the limit). The rows also hold each reward component (`metrics_grpo.csv` in the run folder;
# Tunix also writes TensorBoard logs under `tensorboard/`). Tunix 0.1.7's GRPO loss logs no
# entropy, so there is none to plot.

# %%
from IPython.display import Image, display

from course_utils.plots import plot_signal_curves

display(Image(str(plot_signal_curves(RUN_DIR / "metrics_grpo.jsonl", RUN_DIR / "signal_curves.png"))))
print(f"filter_prompts={config.filter_prompts}, G={config.num_generations}")

# %% [markdown]
# The reward's components and weights over the run; the vertical lines mark the curriculum's
# phases.

# %%
from IPython.display import Image, display

from course_utils.plots import plot_training_curves

display(Image(str(plot_training_curves(RUN_DIR / "metrics_grpo.jsonl", RUN_DIR / "grpo_curves.png"))))

# %% [markdown]
# Where the time of a step goes, on this machine (the first call of each includes compiling):

# %%
for phase, seconds in grpo.timings.items():
    if seconds:
        print(f"{phase:>23}: {len(seconds)} calls, median {sorted(seconds)[len(seconds) // 2]:.2f} s")

# %% [markdown]
# ## 6. Base → SFT → GRPO
#
# The same held-out problems once more. Each figure has a bootstrap 95 % interval; the last
# line is GRPO's gain over SFT alone, paired problem by problem, with its own interval: a gain
# whose interval excludes zero is one the data supports. On the `cpu` profile it does not: 14
# steps on 2 cores gave +0.0 points of accuracy [−3.0, +3.0] and cost 5.5 points of format
# (README, "Results on a CPU", says why).

# %%
from course_utils.evaluation import evaluate_or_reuse, find_checkpoint, markdown_table, paired_bootstrap

grpo_eval = evaluate_or_reuse("grpo", actor, config, held_out, RUN_DIR, loaded=loaded,
                              checkpoint=find_checkpoint(RUN_DIR, "grpo", search_kaggle_inputs=False))
print(markdown_table([base, sft_eval, grpo_eval], ["format", "strict"]))
for metric in ("format", "strict"):
    gain = paired_bootstrap(sft_eval.values(metric), grpo_eval.values(metric), seed=config.seed)
    print(f"GRPO − SFT {metric}: {gain['difference']:+.3f} (95 % CI {gain['low']:+.3f} … {gain['high']:+.3f})")

# %% [markdown]
# ## Troubleshooting
#
# | symptom | likely cause | what to change |
# |---|---|---|
# | out of memory | batch × G × length too big | smaller `micro_batch_size` (the cpu profile uses 1: the update in halves, 10.2 → 7.2 GiB), shorter `max_generation_length` |
# | KL explodes, replies turn to noise | steps too large | lower `learning_rate`, lower `max_grad_norm` |
# | reward flat, `zero_advantage_frac` near 1 | every answer in a group scores the same | larger G, easier curriculum or `filter_prompts=True` (lowering β adds no signal to a tied group) |
# | reward rises but answers get worse | reward hacking (see part 05) | higher β, check the rewards on the replies |
# | format compliance drops | format weight too low against correctness | raise `format_reward_weight`, or keep `grpo_reference="sft"` |
# | "trained with other settings" error | the configuration changed mid-run | restore the settings, use a new `COURSE_RUN_DIR`, or `ALLOW_CONFIG_CHANGE = True` |
#
# ## Recap
#
# - SFT teaches the format and a habit of steps; GRPO then optimises the composite reward.
# - Tunix's `PeftTrainer` and `RLCluster` + `GRPOLearner` do the work, built above from the
#   config's values; the course adds the curriculum, annealed weights, per-step seeds,
#   metrics, sidecars and the time budget (`course_utils.training`).
# - At μ = 1 the logged policy loss is β·KL (plus a length term under `token-mean`): read the
#   mixed-group share, rollout accuracy, length and truncation instead.
# - Checkpoints (LoRA weights + optimiser state, the last few kept) make every stage resumable
#   to the exact step and data position.
# - Held-out evaluation with confidence intervals says whether a gain is real.
#
# ## Exercises
#
# 1. Set `GRPO_STEPS` to twice the profile's value and run again: what does the error say, and why is continuing a run with another `max_steps` refused by default?
# 2. Find `zero_advantage_frac` and `mixed_group_frac` in `metrics_grpo.csv`. What does a `zero_advantage_frac` of 1.0 mean for that step's update, and why can `mixed_group_frac` be 0 while `zero_advantage_frac` is not 1?
# 3. Train once with `grpo_reference="base"` (in part 02's overrides). How do KL and format compliance behave compared with `"sft"`?
# 4. Interrupt the GRPO cell, then run the notebook again. Which step does it continue from, and how can you tell no step ran twice?
# 5. Run GRPO with `filter_prompts=True` (part 02's overrides). How many candidates were never solved, and how does `mixed_group_frac` compare with the unfiltered run? (`python -m tools.proof` measures the per-prompt effect with a control; see the README.)
# 6. Set `beta` to 0 (part 02's overrides) and look at `policy_loss` in `metrics_grpo.csv`. Why is it 0 (or nearly) at every step although the policy changes? Under which `loss_agg_mode` is it exactly 0?
#
# **Questionnaire**
#
# 1. Why does SFT come before GRPO in this course?
# 2. A group whose G replies all earn the same reward: what advantage does each get, and what does the update learn from it at β = 0?
# 3. With μ = 1 (every profile), why is the clip fraction always 0?
# 4. What does `prepare_stage` refuse, and how do you override it?
# 5. Why must a Kaggle session that ran out of time before GRPO leave no step-0 GRPO checkpoint?
#
# <details><summary>Answers</summary>
#
# 1. GRPO learns only from groups with mixed outcomes; a base model that rarely answers in the format gives groups that all score alike, so there is nothing to compare. SFT teaches the format first.
# 2. Advantage 0 for every reply: no policy gradient. At β = 0 nothing is learnt from it; with β > 0 only the pull toward the reference remains.
# 3. Tunix takes the current log-probs as the old ones when μ = 1, so the ratio is exactly 1 and never leaves [1 − ε, 1 + ε].
# 4. Continuing a stage whose training settings changed since its last checkpoint; set `ALLOW_CONFIG_CHANGE = True` in the parameters.
# 5. It holds the weights of an SFT that had not finished; the next session would restore it and put those
#    half-trained weights back over the finished SFT.
#
# </details>
#
# ## Further reading
#
# - DeepSeek-R1 (SFT cold start, then RL): https://arxiv.org/abs/2501.12948
# - Tunix GRPO example: https://github.com/google/tunix/tree/main/examples
# - Orbax checkpointing: https://orbax.readthedocs.io
