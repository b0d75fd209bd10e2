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

from course_utils import env, training
from course_utils.config import load_run_config
from course_utils.data import load_splits
from course_utils.lora import apply_lora
from course_utils.model import load_model, model_mesh

knobs = {"sft_steps": SFT_STEPS, "max_steps": GRPO_STEPS, "time_budget_minutes": TIME_BUDGET_MINUTES}
config = load_run_config(PROFILE, **{k: v for k, v in knobs.items() if v is not None})
RUN_DIR = env.run_dir(config.profile)
mesh = model_mesh(config)  # (2, 4) on a TPU v5e-8, (1, 1) on a CPU (part 01)
jax.set_mesh(mesh)

# %%
loaded = load_model(config, mesh)
actor = apply_lora(loaded.model, config, mesh)  # the policy we train; shares the base weights
splits = load_splits(config)
held_out = splits["test"][: EVAL_PROBLEMS or config.eval_examples]
deadline = training.Deadline(config.time_budget_minutes)  # one budget for the whole notebook
print(f"{len(splits['train'])} training problems, {len(held_out)} held-out problems; budget {config.time_budget_minutes} min")

# %% [markdown]
# ## 1. The baseline
#
# Before training, the model is scored on held-out problems it will never train on, with
# greedy decoding (always the most likely next token), like the Kaggle Tunix competition's
# judging. Results are cached in the run directory, so a re-run does not pay for them again.

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

print(format_solution(splits["train"][0]))

# %% [markdown]
# LoRA SFT with Tunix's `PeftTrainer`: AdamW with warm-up and cosine decay, a learning rate
# about 10× GRPO's (LoRA wants larger steps than full fine-tuning), gradient clipping at 1.0.

# %%
# The session's budget also has to cover the two evaluations after SFT: timed from the baseline's.
eval_minutes = training.evaluation_minutes(config, RUN_DIR, len(held_out))
print(f"keeping {2 * eval_minutes:.1f} min of the budget for the SFT and final evaluations")
sft = training.train_sft(config, actor, loaded.tokenizer, splits["train"], RUN_DIR,
                         deadline=deadline.reserve(2 * eval_minutes), allow_config_change=ALLOW_CONFIG_CHANGE)
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
sft_eval = evaluate_or_reuse("sft", actor, config, held_out, RUN_DIR, loaded=loaded,
                             checkpoint=find_checkpoint(RUN_DIR, "sft", search_kaggle_inputs=False))
print(markdown_table([base, sft_eval], ["format", "strict"]))

# %% [markdown]
# ## 4. Stage 2: GRPO
#
# Each step takes a batch of questions, samples G answers to each with a new seed, scores
# them with the composite reward, and moves the policy towards the answers that beat their
# group (part 02). The choices of this course:
#
# - **Reference model.** The KL term anchors the policy to π_ref. With `grpo_reference="sft"`
#   (default) π_ref is a frozen copy of the SFT policy GRPO starts from, as in DeepSeek-R1;
#   `"base"` anchors to the untouched base model instead, as the official Tunix notebook does
#   (it has no SFT stage, so there the two coincide).
# - **Curriculum.** Easy problems first, then medium, then hard: `curriculum_easy_share` and
#   `curriculum_medium_share` of the steps (thirds on the full run), the rest hard.
# - **Annealed weights.** Early on, format and coherence weigh more; later, correctness does
#   (w_trace 0.45 → 0.25, w_correct 0.40 → 0.60); the last step pays exactly the end weights.
# - **Loss and advantage.** `loss_agg_mode` and `advantage_estimator` go to Tunix's
#   `GRPOConfig`. The cpu profile uses "token-mean" (every token weighs alike, so long wrong
#   replies are not spared) and "drgrpo" (A = r − mean, no std scaling of small differences);
#   chosen from the literature, not yet measured on it.
# - **Learning to stop.** Tunix's rollout ends each completion before `<end_of_turn>`, so the
#   decision to stop never gets credit. With `learn_to_stop` the course puts the token back on
#   every reply that stopped by itself, and stopping is trained like any other token.
#
# The progress bar shows the time left, the actor's loss and KL, and the reward and accuracy
# of the step's own rollouts (`rollout_train_reward`, `rollout_train_accuracy`).
#
# ### Which prompts carry a signal
#
# GRPO's advantage compares the G replies to one prompt. If all G are right, or all wrong,
# correctness cannot tell them apart, and only format and style move the update. For a prompt
# the policy solves with probability p, the G replies disagree with probability
# 1 − pᴳ − (1 − p)ᴳ. With this configuration's G:

# %%
from course_utils import filtering

for p in (0.02, 0.08, 0.2, 0.5, 0.9):
    print(f"p = {p:.2f}: {filtering.mixed_group_probability(p, config.num_generations):.2f} of groups carry a correctness signal (G = {config.num_generations})")

# %% [markdown]
# So the prompts worth training on are the ones the policy solves *sometimes*. With
# `filter_prompts=True`, `train_grpo` first samples `filter_samples_k` replies to each of
# `filter_candidates` candidates (of `filter_difficulties`) at the rollout temperature with the
# SFT policy, and keeps those with `filter_pass_rate_min ≤ p̂ ≤ filter_pass_rate_max` (Tunix
# 0.1.7 has no dynamic sampling, so this happens once, before training; the samples are cached
# in the run folder). Every step logs `mixed_group_frac`, the share of its groups whose
# correctness is mixed: the signal GRPO actually had.

# %%
reference = training.make_reference(loaded.model, actor, config, mesh)
eval_minutes = training.evaluation_minutes(config, RUN_DIR, len(held_out))  # timed from the SFT evaluation
grpo = training.train_grpo(config, actor, reference, loaded.tokenizer, splits["train"], RUN_DIR, mesh,
                           deadline=deadline.reserve(eval_minutes), allow_config_change=ALLOW_CONFIG_CHANGE)
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
# The full `tpu` run does not keep the official Tunix notebook's values (β 0.08, η 3e-6, clip
# 0.1, G 4: a public reproduction gained format, not accuracy). It takes what the cpu runs and
# the literature show: β 0 (no reference model), η 3e-5 (LoRA wants ≈ 10× a full fine-tune's
# rate), clip 1.0, G 8, token-mean loss with Dr. GRPO advantages, prompts filtered by pass rate,
# a correctness-led reward (0.80), and one prompt per micro batch so the update fits a 16 GiB
# chip (README, "Rehearsed at full size"). None of it has run on a TPU yet.

# %% [markdown]
# ## 5. Learning curves
#
# Four panels from the per-step metrics (`metrics_grpo.jsonl` / `.csv` in the run directory;
# Tunix also writes them to TensorBoard under `tensorboard/`): the policy loss and KL, the
# reward and its components, the trace score (format + coherence), and the reward weights.
# The vertical lines mark the curriculum's phases.

# %%
from course_utils.plots import plot_training_curves

display(Image(str(plot_training_curves(RUN_DIR / "metrics_grpo.jsonl", RUN_DIR / "grpo_curves.png"))))

# %% [markdown]
# The signal itself, step by step: the share of groups with mixed correctness, the rollouts'
# accuracy, the reward and the reply length (a reply that never stops grows to the limit).

# %%
from course_utils.plots import plot_signal_curves

display(Image(str(plot_signal_curves(RUN_DIR / "metrics_grpo.jsonl", RUN_DIR / "signal_curves.png"))))
print(f"filter_prompts={config.filter_prompts}, G={config.num_generations}")

# %% [markdown]
# Where the time of a step goes, on this machine (the first call of each includes compiling):

# %%
for phase, seconds in grpo.timings.items():
    if seconds:
        print(f"{phase:>10}: {len(seconds)} calls, median {sorted(seconds)[len(seconds) // 2]:.2f} s")

# %% [markdown]
# ## 6. Base → SFT → GRPO
#
# The same held-out problems once more. Each figure has a bootstrap 95 % interval; the last
# line is GRPO's gain over SFT alone, paired problem by problem, with its own interval: a gain
# whose interval excludes zero is one the data supports. On the `cpu` profile it does not: 14
# steps on 2 cores gave +0.0 points of accuracy [−3.0, +3.0] and cost 5.5 points of format
# (README, "Results on a CPU", says why). The full run has 500 steps to find its gain.

# %%
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
# | reward flat, `zero_advantage_frac` near 1 | every answer in a group scores the same | larger G, easier curriculum, partial-credit rewards, lower β |
# | reward rises but answers get worse | reward hacking (see part 05) | higher β, check the rewards on the replies |
# | format compliance drops | format weight too low against correctness | raise `format_reward_weight`, or keep `grpo_reference="sft"` |
# | "trained with other settings" error | the configuration changed mid-run | restore the settings, use a new `COURSE_RUN_DIR`, or `ALLOW_CONFIG_CHANGE = True` |
#
# ## Recap
#
# - SFT teaches the format and a habit of steps; GRPO then optimises the composite reward.
# - Tunix's `PeftTrainer` and `RLCluster` + `GRPOLearner` do the work; the course adds the
#   curriculum, annealed weights, per-step seeds, metrics, sidecars and the time budget.
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
#
# ## Further reading
#
# - DeepSeek-R1 (SFT cold start, then RL): https://arxiv.org/abs/2501.12948
# - Tunix GRPO example: https://github.com/google/tunix/tree/main/examples
# - Orbax checkpointing: https://orbax.readthedocs.io
