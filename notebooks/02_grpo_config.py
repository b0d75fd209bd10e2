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
# - place GRPO among RL methods for language models (PPO, DeepSeek-R1) in a few lines;
# - compute group-relative advantages, the clipped objective, the KL penalty and the loss
#   aggregation by hand, and check each against Tunix's own code;
# - know what the clip does (and that with μ = 1 it never acts), and why the group's std and
#   the per-reply length normalisation bias what is learned;
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
# ## 0. Reinforcement learning for language models, in one page
#
# In RL a *policy* π_θ (here: the language model) takes *actions* (here: writes a reply, token
# by token) and receives a *reward* (here: a score of the finished reply, part 03). Training
# raises the probability of replies that scored above what was expected and lowers the others:
# the policy-gradient update ∇θ J ≈ E[A · ∇θ log π_θ(reply)], where the *advantage* A says how
# much better than expected the reply was.
#
# - **PPO** (Schulman et al. 2017) estimates "what was expected" with a second network (a
#   critic, typically as large as the model) and limits each update with a clipped probability ratio.
# - **GRPO** (Shao et al. 2024, DeepSeekMath) drops the critic: it samples a *group* of G replies
#   to the same question and uses the group's mean reward as the expectation.
# - **DeepSeek-R1** (DeepSeek-AI 2025) trained reasoning with GRPO and rule-based rewards only
#   (is the final answer right? is the reply in the `<think>…</think><answer>…</answer>`
#   format?); long step-by-step reasoning emerged from that reward alone. R1-Zero started from the
#   base model; R1 first fine-tuned on a few thousand curated reasoning examples ("cold start")
#   and then ran GRPO. This course follows the R1 recipe at toy scale: SFT on the format, then
#   GRPO with rule-based rewards (part 06).
#
# ```
#  question ──► policy π_θ samples G replies ──► reward r_1 … r_G (rules, part 03)
#                     ▲                               │
#                     │   update θ: raise log π of     ▼
#                     └── replies with A_i > 0 ◄── A_i = r_i − mean(r) [÷ std(r)]
# ```

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
# **Dividing by the group's std inflates small differences.** The reward of this course is
# continuous (format, coherence, … part 03), so a group in which every reply is right still
# has small differences. Divided by their own tiny std they become advantages as large as the
# ones of a group where half the replies are right — the update pushes on formatting details as
# hard as on correctness (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783). Tunix's `"drgrpo"`
# estimator keeps A = r − mean, so the push stays proportional to the difference in reward:

# %%
from tunix.rl.algo_core import compute_drgrpo_advantages

groups = {"all right, details differ": [0.80, 0.81, 0.82, 0.83], "half right": [0.2, 0.2, 0.9, 0.9]}
for name, group in groups.items():
    grpo = algo_core.compute_advantages(np.array(group), num_generations=4)
    drgrpo = compute_drgrpo_advantages(np.array(group), num_generations=4)
    print(f"{name:<26} rewards {group} | grpo A {grpo.round(2)} | drgrpo A {np.asarray(drgrpo).round(3)}")

# %% [markdown]
# ## 2. The clipped probability ratio (ε), and what it does in Tunix
#
# GRPO borrows PPO's clip (Schulman et al. 2017, *Proximal Policy Optimization Algorithms*,
# arXiv 1707.06347, section 3). Per reply token, with ρ = π_θ / π_old the ratio of the policy
# being trained to the one that sampled the reply, Tunix's loss is
# max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)): minus the pessimistic (smaller) of the two objectives.
# What that does, precisely:
#
# - a token whose ratio has already moved past 1+ε (for A > 0) or below 1−ε (for A < 0), the
#   way its advantage pushes it, gets **zero gradient**: it stops being pushed further;
# - a token that moved the *other* way keeps its full gradient (the min picks the unclipped term);
# - it does **not** cap how far a probability moves in one step: a single optimiser step can
#   move a ratio well past 1±ε; the clip only acts on the *next* gradient evaluation, which
#   needs a policy that already differs from the one that sampled;
# - it only matters when the same rollouts are used for several updates: μ (`num_iterations`)
#   > 1. With μ = 1 — every profile of this course, and Tunix's default — Tunix does not even
#   compute old log-probs: it uses `stop_gradient(log π_θ)` as log π_old, so ρ = 1 exactly, the
#   clip never acts and the logged `pg_clipfrac` is 0. The update is then the plain policy
#   gradient −A·∇ log π_θ with the group mean as baseline, and ε has no effect at all.
#
# The objective on a range of ratios:

# %%
ratios = jnp.linspace(0.5, 1.5, 5)
for adv in (1.0, -1.0):
    objective = jnp.minimum(ratios * adv, jnp.clip(ratios, 1 - TOY_EPSILON, 1 + TOY_EPSILON) * adv)
    print(f"A={adv:+.0f}: ratio {ratios.round(2)} -> objective {objective.round(2)}")

# %% [markdown]
# Now the same with Tunix's own loss, `algo_core.grpo_loss_fn`. It needs a model; a table of
# logits (one learnable row per position) is enough. Two replies of 3 tokens, one with A = +1
# and one with A = −1. First μ = 1 (no old log-probs): ratio 1, no clipping even at ε = 0.001.

# %%
import jax
from flax import nnx
from tunix.rl import algo_core, common
from tunix.rl.grpo.grpo_learner import GRPOConfig


class TableLM(nnx.Module):
    """A stand-in policy: one learnable row of logits per position, whatever the input."""

    def __init__(self, logits):
        self.logits = nnx.Param(jnp.asarray(logits, jnp.float32))

    def __call__(self, tokens, positions=None, cache=None, attention_mask=None):
        return jnp.broadcast_to(self.logits[...], (tokens.shape[0], *self.logits.shape)), None


policy = TableLM(np.random.default_rng(0).normal(size=(4, 6)))  # 1 prompt + 3 reply positions, 6 tokens
prompt, reply, adv = jnp.array([[2], [2]]), jnp.array([[3, 4, 5], [5, 3, 4]]), jnp.array([1.0, -1.0])
logp_now = jnp.take_along_axis(jax.nn.log_softmax(policy.logits[...][:3]), reply.T, axis=1).T

# %%
def tunix_grpo_loss(old_logp, epsilon=TOY_EPSILON):
    example = common.TrainExample(prompt_ids=prompt, prompt_mask=prompt != 0, completion_ids=reply,
                                  completion_mask=jnp.ones_like(reply), advantages=adv,
                                  ref_per_token_logps=None, old_per_token_logps=old_logp)
    algo = GRPOConfig(num_generations=2, beta=0.0, epsilon=epsilon)
    algo.temperature = 1.0  # GRPOLearner copies the rollout temperature here
    return algo_core.grpo_loss_fn(policy, example, algo, pad_id=0, eos_id=1)


loss, aux = tunix_grpo_loss(None, epsilon=0.001)  # μ = 1: what every profile runs
print(f"μ = 1: loss {float(loss):+.4f}, pg_clipfrac {float(aux['pg_clipfrac']):.2f}")

# %% [markdown]
# With μ > 1 the second update sees a policy that has moved since sampling. Shift the old
# log-probs to stand for that move, compute the clipped loss by hand (Tunix's default
# aggregation: mean over each reply's tokens, then over replies) and compare. The gradient per
# token shows what the clip does: zero exactly where the ratio is past the clip in the
# advantage's direction.

# %%
logp_old = logp_now + jnp.array([[-0.5, 0.1, 0.0], [0.5, -0.1, 0.0]])  # ratios e^0.5, e^-0.1, 1, …


def clipped_loss(logp, logp_old, eps=TOY_EPSILON):
    ratio = jnp.exp(logp - logp_old)
    per_token = jnp.maximum(-adv[:, None] * ratio, -adv[:, None] * jnp.clip(ratio, 1 - eps, 1 + eps))
    return per_token.mean(axis=1).mean()


loss, aux = tunix_grpo_loss(logp_old)
assert jnp.allclose(loss, clipped_loss(logp_now, logp_old), atol=1e-6), (loss, clipped_loss(logp_now, logp_old))
print(f"μ > 1: loss {float(loss):+.4f} = ours | pg_clipfrac {float(aux['pg_clipfrac']):.2f} (2 of 6 tokens)")
print("ratios\n", np.asarray(jnp.exp(logp_now - logp_old)).round(2))
print("gradient of the loss per token's log-prob\n", np.asarray(jax.grad(clipped_loss)(logp_now, logp_old)).round(3))

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
# ## 3b. The whole objective, and how token terms are summed
#
# Per token t of reply i: ℓ_i,t = max(−A_i·ρ_i,t, −A_i·clip(ρ_i,t, 1−ε, 1+ε)) + β·KL_i,t
# (the KL term only when β ≠ 0; it is aggregated like the policy term). The loss of a batch is
# an *aggregate* of these terms, and the choice matters (`loss_agg_mode`):
#
# | `loss_agg_mode` | loss | where in Tunix |
# |---|---|---|
# | `sequence-mean-token-mean` | mean over replies of (mean over the reply's tokens) | `GRPOConfig` default, as in the GRPO paper |
# | `token-mean` | sum over all tokens / number of tokens | `DAPOConfig` default (DAPO, arXiv 2503.14476) |
# | `sequence-mean-token-scale` | mean over replies of (sum over tokens / the generation limit, to which Tunix pads every reply) | `DrGRPOConfig` default (Dr. GRPO) |
#
# The default divides each reply by its own length: a token of a long reply weighs less. So a
# long *wrong* reply is pushed down less per token than a short one, and long wrong replies
# are penalised least — replies drift longer (Dr. GRPO's "length bias"). The weight each token
# gets is the gradient of Tunix's own `aggregate_loss` with respect to that token's term; a
# short right reply (2 tokens, A = +1) and a long wrong one (6 tokens, A = −1):

# %%
mask = jnp.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])  # reply lengths 2 and 6
for mode in ("sequence-mean-token-mean", "token-mean", "sequence-mean-token-scale"):
    weight = jax.grad(lambda t: rl_common.aggregate_loss(t, mask, mode))(jnp.zeros(mask.shape))
    at_ratio_1 = rl_common.aggregate_loss(-jnp.array([[1.0], [-1.0]]) * mask, mask, mode)
    print(f"{mode:<27} weight per token: short {float(weight[0, 0]):.3f}, long {float(weight[1, 0]):.3f}"
          f" | loss at ratio 1: {float(at_ratio_1):+.3f}")

# %% [markdown]
# The last column is why the plotted "policy loss" of a GRPO run is no learning curve: at μ = 1
# the ratio is 1, so the policy term's *value* is −(aggregate of A) — 0 under the default
# aggregation when a micro-batch holds whole groups, whatever the model learns (the gradient is not 0), and a length-weighted mean of
# A under `token-mean`. What rises as the policy moves is β·KL. Read learning from the rollouts
# instead (part 06): accuracy, the share of groups with mixed outcomes, length, truncation.
#
# **β and tied groups.** When all G replies score the same, every A is 0 and the policy term
# has zero gradient; what remains is β·KL, which only pulls the policy back toward the
# reference. Lowering β removes that pull; it does not create a learning signal for those
# groups — only groups whose replies differ teach anything (larger G, easier prompts, part 06).

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
# symbols, with the values of Tunix's own Gemma 3 1B GRPO notebook (`examples/grpo_gemma.ipynb`
# in google/tunix), the course's `TrainingConfig()` defaults and the full run's revised recipe
# (README, "Rehearsed at full size": sources, and not yet run on a TPU):
#
# | symbol | field | meaning | Tunix notebook | `TrainingConfig()` | full `tpu` run |
# |---|---|---|---|---|---|
# | G | `num_generations` | answers sampled per question | 2 | 4 | 8 |
# | μ | `num_iterations` | updates per batch of rollouts (the clip acts only if > 1) | 1 | 1 | 1 |
# | β | `beta` | weight of the KL penalty (estimator: `kl_loss_mode`) | 0.08 | 0.08 | 0 (no reference model) |
# | ε | `epsilon` | clip range of the ratio (inactive at μ = 1) | 0.2 | 0.2 | 0.2 |
# | η | `learning_rate` | AdamW step size (warm-up then cosine decay) | 3e-6 | 3e-6 | 3e-5 |
# | | `max_grad_norm` | global-norm gradient clipping | 0.1 | 0.1 | 1.0 |
# | r, α | `lora_rank`, `lora_alpha` | LoRA rank and scale α/r | 64, 64 | 8, 16 | 8, 16 |
# | | `max_steps` | GRPO steps | 3,364 (3,738 batches × 0.9) | 500 | 500 |
# | A | `advantage_estimator` | "grpo" (r − mean)/std, "drgrpo" r − mean, "rloo" | grpo | grpo | drgrpo |
# | | `loss_agg_mode` | how token terms are aggregated (section 3b) | sequence-mean-token-mean | sequence-mean-token-mean | token-mean |
#
# So the defaults keep the notebook's β, ε, η and gradient clipping, but not its G, LoRA size or
# length of training: 500 steps is the course's budget, not the notebook's. The learning rates
# of the two training stages, from the configuration:

# %%
for name in ("cpu", "tpu"):
    c = TrainingConfig.for_profile(name)
    print(f"{name}: SFT η {c.sft_learning_rate:g} / GRPO η {c.learning_rate:g} = {c.sft_learning_rate / c.learning_rate:.1f}×"
          f" | GRPO η / the Tunix notebook's 3e-6 = {c.learning_rate / 3e-6:.0f}×")

# %% [markdown]
# The warm-up starts above 0: optax reads the schedule at the count of updates already done, so
# the course shifts it by one and update k runs at η·k / warm-up steps (`update_learning_rate`).
# The ×10 of GRPO's η over the notebook's follows "LoRA Without Regret" (Schulman et al.,
# Thinking Machines 2025: LoRA's best learning rate is ≈ 10× full fine-tuning's); it is not
# measured on the 1B. The cpu and tpu profiles use "token-mean" with "drgrpo" (section 3b).
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
# - GRPO scores a group of G answers per question and uses A = (r − mean)/std (or r − mean,
#   Dr. GRPO) as the advantage; the std inflates small differences of a continuous reward.
# - The clip (ε, from PPO) zeroes the gradient of tokens already past 1±ε in their advantage's
#   direction; it acts only when μ > 1. At μ = 1 Tunix's ratio is exactly 1 and ε does nothing.
# - Token terms are aggregated per reply (Tunix's default: a length bias), per token (DAPO) or
#   per generation limit (Dr. GRPO); the KL term (β) pulls toward the reference.
# - The advantage, the clipped loss, the KL and the aggregation match Tunix's own code.
# - `TrainingConfig` holds every knob; profiles are `dataclasses.replace` of the full run; bad values fail early.
# - The configuration is saved in the run directory for the next parts.
#
# ## Exercises
#
# 1. Set `TOY_REWARDS = [0.5, 0.5, 0.5, 0.5]`. What are the advantages, and why can such a group not teach anything?
# 2. With `TOY_EPSILON = 0.1`, for which ratios does the objective stop changing when A = +1?
# 3. Make `logp_new` equal to `logp_ref`. What is the KL, and why?
# 4. Try `OVERRIDES = {"global_batch_size": 3}` with a mini batch of 4. What does the error tell you?
# 5. In the μ > 1 cell, shift the old log-probs by ±0.1 only. What is `pg_clipfrac`, and does
#    the loss still equal ours?
#
# **Questionnaire**
#
# 1. Which network does GRPO drop compared with PPO, and what replaces it?
# 2. Every profile runs μ = 1. What is the ratio ρ, and what does ε change?
# 3. A group of four right replies has rewards 0.80, 0.81, 0.82, 0.83. Why does `"grpo"` push on
#    them as hard as on a half-right group?
# 4. Under `sequence-mean-token-mean`, does a token of a 6-token wrong reply weigh more or less
#    than a token of a 2-token one?
# 5. Why is the plotted policy loss not a learning curve at μ = 1?
# 6. Does lowering β make a group of tied replies teach something?
#
# <details><summary>Answers</summary>
#
# 1. The critic (value network); the group's mean reward is the baseline.
# 2. Exactly 1 (old log-probs = the current ones, gradient stopped); ε changes nothing.
# 3. Their std is tiny (≈ 0.013), so (r − mean)/std scales the differences up to ≈ ±1.2.
# 4. Less: 1/(2·6) against 1/(2·2) — long wrong replies are penalised least per token.
# 5. At ratio 1 its value is −(aggregate of A): 0 under the default aggregation whatever the
#    model learns; what it shows is mostly β·KL.
# 6. No: all advantages are 0, so there is no policy gradient; β only sets the pull to the reference.
#
# </details>
#
# ## Further reading
#
# - Shao et al., *DeepSeekMath* (introduces GRPO): https://arxiv.org/abs/2402.03300
# - Schulman et al., *Proximal Policy Optimization Algorithms* (the clip, ε): https://arxiv.org/abs/1707.06347
# - DeepSeek-AI, *DeepSeek-R1*: https://arxiv.org/abs/2501.12948
# - Liu et al., *Understanding R1-Zero-Like Training* (Dr. GRPO): https://arxiv.org/abs/2503.20783
# - Yu et al., *DAPO*: https://arxiv.org/abs/2503.14476
# - Tunix's Gemma GRPO notebook: https://github.com/google/tunix/blob/main/examples/grpo_gemma.ipynb
# - Schulman, *Approximating KL divergence*: http://joschu.net/blog/kl-approx.html
# - Tunix GRPO learner: https://github.com/google/tunix/tree/main/tunix/rl/grpo
