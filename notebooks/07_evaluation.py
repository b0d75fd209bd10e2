# %% [markdown]
# # Part 07 · Evaluation
# [![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/07_evaluation.ipynb) [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/07_evaluation.ipynb)
#
# Training curves show that the reward went up; they do not show that the model reasons better.
# This part measures that the way papers do: the same test problems for every model, greedy
# decoding for the headline numbers, sampled decoding for pass@k and maj@k, a 95 % confidence
# interval on every number, and a look at *how* the wrong answers go wrong.
#
# **Objectives**
# - score a reply four ways (strict, lenient, format, partial) plus the composite reward, and
#   sort every wrong reply into one error category;
# - put a bootstrap confidence interval on each metric and a *paired* interval on each gain;
# - compute pass@k and maj@k from k sampled replies;
# - compare the base model, the SFT model and the GRPO model side by side, and save the table.
#
# **Prerequisites**: parts 03 (data and rewards) and 04 (model). Part 06 (training) for the SFT
# and GRPO checkpoints — without them this part evaluates the base model and says how to get a
# trained one. Runs on any profile; the time grows with the number of test problems, the number of
# models found and k (each model writes one greedy and k sampled replies per problem).

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
EVAL_EXAMPLES = None  # test problems per model; None = config.eval_examples (all 1,319 on tpu, the first 200 on cpu)
SAMPLES_K = None  # k replies sampled per problem for pass@k / maj@k; None = config.eval_samples_k (1 = skip)
SAMPLED_EXAMPLES = None  # problems that also get the k sampled replies; None = config.eval_sampled_examples
MAX_NEW_TOKENS = None  # generation limit in tokens; None = config.max_generation_length
REUSE_SAVED = True  # reuse a result (or greedy replies) saved in the run directory under the same settings
SHOW_EXAMPLES = 3  # problems shown before/after
BOOTSTRAP_SEED = 0  # seed of the bootstrap resampling (intervals are reproducible)

# %% [markdown]
# ## What you need from the earlier parts
#
# The run's configuration (part 02), the test problems (part 03), the base model (part 04) and
# the checkpoints of part 06, looked up in the run directory — `checkpoints/sft` and
# `checkpoints/grpo` — or, on Kaggle, in an attached input (the output of your training
# notebook, added with *Add Input*). Nothing is trained here.

# %%
from course_utils.config import load_run_config
from course_utils.data import load_splits
from course_utils.env import run_dir
from course_utils import evaluation as ev

overrides = {"eval_examples": EVAL_EXAMPLES} if EVAL_EXAMPLES else {}
config = load_run_config(PROFILE, **overrides)
RUN_DIR = run_dir(config.profile)
test = load_splits(config)["test"]
checkpoints = {stage: ev.find_checkpoint(RUN_DIR, stage) for stage in ("sft", "grpo")}
for stage, found in checkpoints.items():
    print(f"{stage}: {found or 'no checkpoint yet'}")
if not any(checkpoints.values()):
    print("No trained checkpoint: this run evaluates the base model only. To get one, run part 06 "
          "(06_training) with this profile, or attach its output on Kaggle (Add Input), then re-run this part.")

# %% [markdown]
# ## 1. Four ways to score one reply
#
# The model should answer as `<reasoning>…</reasoning><answer>…</answer>`. **Strict** accuracy
# asks whether the number *inside* `<answer>` is right — what a program reading the answer would
# get. **Lenient** accuracy takes the *last number anywhere* in the reply, as a person skimming it
# would. **Format** asks whether the reply is exactly the two blocks. **Partial** accepts a tagged
# answer within 10 % of the truth. The composite reward of part 03 is reported too, exactly as
# GRPO pays it: with the question (made-up arithmetic earns nothing) and the last step's weights.

# %%
good = "<reasoning>She sold 48 / 2 = 24 clips in May.\n48 + 24 = 72 in total.</reasoning>\n<answer>72</answer>"
chatty = "Let me think. 48 / 2 = 24, and 48 + 24 = 72. So the answer is 72."
for reply in (good, chatty):
    row = ev.score_reply(reply, "72", config=config)
    print({k: row[k] for k in ("strict", "lenient", "format", "partial", "error")}, f"reward {row['reward']:.3f}")

# %% [markdown]
# The chatty reply is right for a reader (lenient) and wrong for a program (strict): that gap is
# exactly what the format reward of GRPO is meant to close.
#
# ## 2. Where a wrong reply goes wrong
#
# Every reply lands in one category, checked in this order: `correct`; `truncated` (hit the
# token limit without ending on a closed `</answer>`); `no_answer` (no tagged answer and no
# number at all); `format_broken` (ended by itself, but not in the two-block format);
# `wrong_arithmetic` (well formatted, wrong, and some written calculation `a op b = c` in it is
# false); `wrong_answer` (well formatted, every checkable calculation right, still wrong: the
# set-up is).

# %%
from course_utils.rewards import check_arithmetic  # the checker the coherence reward uses

for text in ("48 / 2 = 24 and 48 + 24 = 72", "3 x 4 = 13, then 2 + 3 * 4 = 14", "10 / 3 = 3.33"):
    print(f"{text!r:40} ->", [(c.text, "ok" if c.ok else "WRONG") for c in check_arithmetic(text)])
bad = "<reasoning>48 / 2 = 25, so 48 + 25 = 73.</reasoning><answer>73</answer>"
print("category:", ev.score_reply(bad, "72", config=config)["error"])

# %% [markdown]
# ## 3. Confidence intervals
#
# An accuracy measured on n problems is an estimate. The bootstrap asks how much it would move
# on another draw of n problems: resample the problems with replacement 2,000 times, recompute
# the mean, and keep the middle 95 %. To compare two models on the *same* problems, resample
# problems and take the difference each time (a paired bootstrap): problems both find easy or
# both find hard cancel out, so the interval on the gain is much tighter than two separate ones.

# %%
import numpy as np

rng = np.random.default_rng(BOOTSTRAP_SEED)
before = (rng.random(200) < 0.30).astype(float)  # a toy model right on 30 % of 200 problems
after = np.maximum(before, rng.random(200) < 0.10)  # fixes about 10 % more, breaks none
print("before %.3f [%.3f, %.3f]" % ev.bootstrap_ci(before, seed=BOOTSTRAP_SEED))
print("after  %.3f [%.3f, %.3f]" % ev.bootstrap_ci(after, seed=BOOTSTRAP_SEED))
gain = ev.paired_bootstrap(before, after, seed=BOOTSTRAP_SEED)
print(f"gain   {gain['difference']:.3f} [{gain['low']:.3f}, {gain['high']:.3f}]  (paired)")

# %% [markdown]
# ## 4. pass@k and maj@k
#
# Greedy decoding gives one answer per problem. Sampling k answers (temperature τ) tells more:
# **pass@k** is the chance that at least one of k samples is right — from n samples with c right
# it is 1 − C(n−c, k)/C(n, k), the unbiased estimator of Chen et al. — and **maj@k** is whether
# the majority vote of the k tagged answers is right (self-consistency).

# %%
for n, c, k in ((4, 1, 1), (4, 1, 4), (8, 2, 4)):
    print(f"n={n} samples, c={c} right: pass@{k} = {ev.pass_at_k(n, c, k):.3f}")
print("majority of ['18', '18.0', '20', None]:", ev.majority_answer(["18", "18.0", "20", None]))

# %% [markdown]
# ## 5. The base model
#
# The baseline is the model before any training, asked the same prompts (part 03's
# `build_prompt`) in batches through Tunix's sampler. Greedy decoding gives the headline numbers
# (deterministic: a rerun gives the same replies); then k sampled replies per problem for the first
# `SAMPLED_EXAMPLES` problems. A result saved earlier under the same settings is reused, and so
# are the greedy replies part 06 saved for the same checkpoint: only the sampled ones are new.

# %%
from course_utils.model import load_model

settings = dict(k=SAMPLES_K, sampled_examples=SAMPLED_EXAMPLES, max_new_tokens=MAX_NEW_TOKENS,
                seed=BOOTSTRAP_SEED, run_dir=RUN_DIR if REUSE_SAVED else None)
base = load_model(config)
print(base.source)
baseline = ev.evaluate_model(base, test, config, name="baseline", **settings)
print({m: round(s["mean"], 3) for m, s in baseline.metrics.items()})

# %% [markdown]
# ## 6. The trained models
#
# Each checkpoint of part 06 holds only the LoRA weights. They go back onto the *same* base
# weights (LoRA wraps them, nothing is copied) and the model is evaluated exactly like the
# baseline. Missing checkpoints are skipped.

# %%
results = [baseline]
for stage, found in checkpoints.items():
    if found is not None:
        trained = ev.load_trained_model(config, found, base=base)
        results.append(ev.evaluate_model(trained, test, config, name=stage, checkpoint=found, **settings))
print("evaluated:", [r.name for r in results])

# %% [markdown]
# ## 7. Side by side
#
# One column per model, 95 % intervals in brackets, then the paired differences (each model
# against the baseline and against the one before it: SFT − baseline, GRPO − SFT) and the error
# breakdown. The same table is saved as `eval/results.md`, everything else (every reply, every
# score) as `eval/results.json` in the run directory; part 08 builds the model card from it.

# %%
from IPython.display import Image, Markdown, display

paths = ev.save_results(results, RUN_DIR)
print(f"measured on {results[-1].settings['hardware']}, {len(test)} problems, profile {config.profile}")
display(Markdown(ev.markdown_table(results)))
print("saved:", paths["json"], paths["markdown"])

# %% [markdown]
# Read the intervals before the means: a gain whose paired interval contains 0 is not
# established on this many problems. On `smoke` the model is random and every number is noise —
# that is the point of the profile: it checks the pipeline, not the model.
#
# ## 8. Before and after
#
# Aggregates hide what changed. The problems below are the ones the last model fixed first, then
# those whose format it fixed, then the largest changes of reward, compared with the baseline,
# with both replies (with the baseline alone: its first problems).

# %%
shown = [results[0], results[-1]] if len(results) > 1 else results
first, last = shown[0].rows, shown[-1].rows
order = sorted(range(len(first)), key=lambda i: (first[i]["strict"] - last[i]["strict"],
                                                 first[i]["format"] - last[i]["format"],
                                                 -abs(last[i]["reward"] - first[i]["reward"])))
text = []
for i in order[:SHOW_EXAMPLES]:
    text += [f"### Problem {i} (gold answer {first[i]['gold']})", first[i]["question"].strip(), ""]
    for r in shown:
        row, mark = r.rows[i], {True: "✓", False: "✗"}
        text += [f"**{r.name}**: strict {mark[row['strict']]}, format {mark[row['format']]}, "
                 f"reward {row['reward']:.3f}, {row['error']}",
                 "    " + (row["response"][:400].replace("\n", "\n    ") or "(empty reply)"), ""]
display(Markdown("\n".join(text)))

# %% [markdown]
# ## 9. Score distributions
#
# The histogram shows whether the reward moved for most problems or only for a few; the bars
# show the headline metrics with their intervals; the stacked bars show where the replies go
# wrong, per model.

# %%
from course_utils.plots import plot_evaluation

plot = plot_evaluation(results, RUN_DIR / "plots" / "evaluation.png")
display(Image(filename=str(plot)))
for r in results:
    print(f"{r.name:>9}:", {k: v for k, v in r.errors.items() if v})

# %% [markdown]
# ## Recap
#
# - Strict accuracy reads the tagged answer; lenient reads the last number; the gap between them
#   is a formatting problem, not a reasoning one.
# - Every reply gets one error category; `wrong_arithmetic` is found by re-doing the written
#   calculations exactly, without ever evaluating model text as code.
# - Every metric carries a 95 % bootstrap interval, and gains carry a paired one.
# - pass@k and maj@k use k sampled replies; the headline numbers are greedy.
# - Results are saved as JSON and Markdown in the run directory for part 08.
#
# ## Exercises
#
# 1. Set `SAMPLES_K = 8`. How do pass@8 and maj@8 compare with greedy accuracy, and why can
#    pass@k rise while maj@k stays flat?
# 2. Double `MAX_NEW_TOKENS`. Which error category shrinks? What does that say about the
#    training length?
# 3. Run with `EVAL_EXAMPLES = 50`, then `200`. How does the width of the interval on strict
#    accuracy change? (Expect about 1/√n.)
# 4. Find a reply counted `lenient` but not `strict` in `eval/grpo.jsonl`. Would a reward that
#    only checked the last number have taught the model the format?
# 5. Why is the paired interval on GRPO − SFT narrower than the two separate intervals suggest?
#
# **Questionnaire**
#
# 1. A reply ends "… so she has 18 apples" with no `<answer>` tag. Is it strict-correct? Lenient-correct?
# 2. n = 4 samples, c = 1 right: what is pass@1, and what is pass@4?
# 3. Why are the headline numbers greedy rather than sampled?
# 4. Two models are scored on the same problems. Why compare them with a paired bootstrap
#    rather than two separate intervals?
# 5. Evaluation scores the composite reward with `final_weights`. Why those weights?
#
# <details><summary>Answers</summary>
#
# 1. Not strict (strict reads only the tagged answer); lenient-correct if 18 is right (it reads
#    the last number).
# 2. pass@1 = 1/4 = 0.25; pass@4 = 1 − C(3, 4)/C(4, 4) = 1: one of the four samples is right.
# 3. Greedy decoding is deterministic: the same model gives the same number on a rerun, so a
#    difference between models is not sampling noise.
# 4. Most of the variance comes from which problems are easy; pairing on the same problems
#    cancels it, so the interval on the difference is narrower and honest.
# 5. They are what the last GRPO step paid, so the composite at evaluation is the training
#    reward at the end (part 03).
#
# </details>
#
# ## Further reading
#
# - Cobbe et al., *Training Verifiers to Solve Math Word Problems* (GSM8K): https://arxiv.org/abs/2110.14168
# - Chen et al., *Evaluating Large Language Models Trained on Code* (unbiased pass@k): https://arxiv.org/abs/2107.03374
# - Wang et al., *Self-Consistency Improves Chain of Thought Reasoning* (maj@k): https://arxiv.org/abs/2203.11171
# - Efron & Tibshirani, *An Introduction to the Bootstrap* (1993); Dror et al., *The Hitchhiker's Guide to Testing Statistical Significance in NLP*: https://aclanthology.org/P18-1128/
