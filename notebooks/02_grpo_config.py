# %% [markdown]
# # Part 02 · GRPO and the course configuration
# [![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/02_grpo_config.ipynb) [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/02_grpo_config.ipynb)
#
# GRPO (Group Relative Policy Optimisation) improves a model with nothing but a reward: for each
# question it samples a *group* of answers, scores them, and pushes the model towards the
# answers that beat their group's average. No value network (critic) is needed. This part
# computes each piece of GRPO on a toy group, then fixes every knob of the run in one
# configuration that the later parts read back.
#
# **Objectives**
# - compute group-relative advantages, the clipped probability ratio and the KL penalty by hand;
# - check the hand-made versions against Tunix's own code;
# - read the configuration table and know what each symbol (G, β, ε, η, r, α) does;
# - save the configuration where parts 03–08 find it.
#
# **Prerequisites**: part 01 (packages installed). Runs on any hardware in seconds.

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
OVERRIDES = {}  # any TrainingConfig field, e.g. {"beta": 0.04, "max_steps": 300}
TOY_REWARDS = [0.9, 0.2, 0.55, 0.2]  # one group of G = 4 scored answers to one question
TOY_EPSILON = 0.2  # ε for the clipping demo
TOY_BETA = 0.08  # β for the KL demo

# %% [markdown]
# ## What you need from the earlier parts
#
# Only the installed packages from part 01. This part *creates* the state later parts need: the
# configuration file in the run directory.

# %%
import jax.numpy as jnp

from course_utils.config import TrainingConfig
from course_utils.env import run_dir

# %% [markdown]
# ## 1. Group-relative advantage
#
# For one question the model writes G answers with rewards r₁…r_G. The advantage of answer i is
# how far it beats its group, in units of the group's spread:
# A_i = (r_i − mean(r)) / std(r). Above-average answers get A > 0 and become more likely;
# below-average ones get A < 0. If every answer scores the same, all advantages are 0: that
# group teaches nothing (part 06 tracks how often this happens).

# %%
rewards = jnp.array(TOY_REWARDS)
advantages = (rewards - rewards.mean()) / (rewards.std(ddof=1) + 1e-6)
print("rewards   ", rewards)
print("advantages", advantages.round(3), f"(they sum to {float(advantages.sum()):+.0e}, i.e. zero)")

# %% [markdown]
# Tunix computes exactly this (sample standard deviation, `ddof=1`, plus 1e-6 so a tied group
# does not divide by zero). Checking our cell against the library keeps the lesson honest:

# %%
import numpy as np
from tunix.rl import algo_core

tunix_adv = algo_core.compute_advantages(np.array(TOY_REWARDS), num_generations=len(TOY_REWARDS))
assert np.allclose(tunix_adv, advantages, atol=1e-6), (tunix_adv, advantages)
print("matches tunix.rl.algo_core.compute_advantages")

# %% [markdown]
# ## 2. The clipped probability ratio (ε)
#
# The update compares the new policy with the one that sampled the answers, token by token:
# ratio = π_new / π_old. GRPO maximises min(ratio·A, clip(ratio, 1−ε, 1+ε)·A), so one batch can
# never move a token's probability by more than a factor 1±ε in the direction that helps.
# Past the clip the gradient is zero: the step is capped.

# %%
ratios = jnp.linspace(0.5, 1.5, 5)
for adv in (1.0, -1.0):
    objective = jnp.minimum(ratios * adv, jnp.clip(ratios, 1 - TOY_EPSILON, 1 + TOY_EPSILON) * adv)
    print(f"A={adv:+.0f}: ratio {ratios.round(2)} -> objective {objective.round(2)}")

# %% [markdown]
# ## 3. The KL penalty to the reference model (β)
#
# A frozen copy of the starting model (the *reference*) anchors the policy: the loss adds
# β·KL(π_new ‖ π_ref), so the model cannot drift into gibberish that games the reward. GRPO
# estimates it per token with Schulman's low-variance estimator: with d = log π_ref − log π_new,
# KL ≈ e^d − d − 1, which is never negative and is 0 when both agree. Tunix's `GRPOConfig`
# defaults to the plain estimator (log π_new − log π_ref); the course sets
# `kl_loss_mode="low_var_kl"` in its configuration to match the paper.

# %%
logp_new = jnp.log(jnp.array([0.50, 0.30, 0.90]))
logp_ref = jnp.log(jnp.array([0.50, 0.10, 0.60]))
d = logp_ref - logp_new
kl = jnp.exp(d) - d - 1
print("per-token KL", kl.round(4), "| penalty β·mean =", float((TOY_BETA * kl.mean()).round(5)))

# %%
from tunix.rl import common as rl_common

tunix_kl = rl_common.compute_kl_divergence(logp_new, logp_ref, method="low_var_kl")
assert jnp.allclose(tunix_kl, kl, atol=1e-6)
print("matches tunix.rl.common.compute_kl_divergence")

# %% [markdown]
# ## 4. The course configuration
#
# Every knob lives in one frozen dataclass, `TrainingConfig`. Its defaults are the full Kaggle
# TPU run; the `smoke` and `cpu` profiles are `dataclasses.replace` of it, so nothing is copied.
# A bad value fails at once with a message naming the field and what is allowed:

# %%
try:
    TrainingConfig(num_generations=1)
except ValueError as err:
    print("ValueError:", err)

# %%
config = TrainingConfig.for_profile(PROFILE, **OVERRIDES) if PROFILE else TrainingConfig.from_env(**OVERRIDES)
full = TrainingConfig.for_profile("tpu")
print(f"{'field':<28}{config.profile + ' profile':>20}{'full tpu run':>16}")
for name, value in config.to_dict().items():
    mark = "" if value == getattr(full, name) else "  *"
    print(f"{name:<28}{value!s:>20}{getattr(full, name)!s:>16}{mark}")

# %% [markdown]
# The fields marked `*` are where the active profile differs from the full `tpu` run. The GRPO
# symbols, with the official Tunix Gemma notebook's values (`TrainingConfig()`'s defaults) and the
# full run's revised recipe (README, "Rehearsed at full size": sources, and not yet run on a TPU):
#
# | symbol | field | meaning | Tunix notebook | full run |
# |---|---|---|---|---|
# | G | `num_generations` | answers sampled per question | 4 | 8 |
# | β | `beta` | weight of the KL penalty (estimator: `kl_loss_mode`) | 0.08 | 0 (no reference model) |
# | ε | `epsilon` | clip range of the ratio | 0.2 | 0.2 |
# | η | `learning_rate` | AdamW step size (warm-up then cosine decay) | 3e-6 | 3e-5 (LoRA: ≈ 10×) |
# | r, α | `lora_rank`, `lora_alpha` | LoRA rank and scale α/r | 8, 16 | 8, 16 |
# | A | `advantage_estimator` | "grpo" (r − mean)/std, "drgrpo" r − mean, "rloo" | grpo | drgrpo |
# | | `loss_agg_mode` | how token losses are averaged (Tunix's modes) | sequence-mean-token-mean | token-mean |
#
# The warm-up starts above 0: optax reads the schedule at the count of updates already done, so
# the course shifts it by one and update k runs at η·k / warm-up steps (`update_learning_rate`).
# Tunix's default `loss_agg_mode` averages each reply's tokens first, so a long wrong reply is
# punished less per token; the cpu and tpu profiles use "token-mean" with "drgrpo" (part 06).
#
# The reward weights must sum to 1 (defaults: format 0.25, coherence 0.20, correctness 0.55,
# efficiency 0; the full run leads with correctness: 0.15, 0.05, 0.80, 0); part 03 explains each
# component.

# %% [markdown]
# ## 5. Save it for the later parts
#
# The configuration goes into the profile's run directory as JSON. Parts 03–08 read it back with
# `load_run_config`, and it survives the round trip exactly.

# %%
path = config.save(run_dir(config.profile) / "config.json")
assert TrainingConfig.load(path) == config
print("saved", path, "| fingerprint", config.fingerprint())

# %% [markdown]
# ## Recap
#
# - GRPO scores a group of G answers per question and uses A = (r − mean)/std as the advantage.
# - The ratio clip (ε) caps how far one update moves; the KL term (β) keeps the model near the reference.
# - Our three formulas match Tunix's own implementation.
# - `TrainingConfig` holds every knob; profiles are `dataclasses.replace` of the full run; bad values fail early.
# - The configuration is saved in the run directory for the next parts.
#
# ## Exercises
#
# 1. Set `TOY_REWARDS = [0.5, 0.5, 0.5, 0.5]`. What are the advantages, and why can such a group not teach anything?
# 2. With `TOY_EPSILON = 0.1`, for which ratios does the objective stop changing when A = +1?
# 3. Make `logp_new` equal to `logp_ref`. What is the KL, and why?
# 4. Try `OVERRIDES = {"global_batch_size": 3}` with a mini batch of 4. What does the error tell you?
#
# ## Further reading
#
# - Shao et al., *DeepSeekMath* (introduces GRPO): https://arxiv.org/abs/2402.03300
# - Schulman, *Approximating KL divergence*: http://joschu.net/blog/kl-approx.html
# - Tunix GRPO learner: https://github.com/google/tunix/tree/main/tunix/rl/grpo
