# %% [markdown]
# # Part 05 · Testing the reward before trusting it
# [![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/05_reward_testing.ipynb) [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/05_reward_testing.ipynb)
#
# A policy trained with GRPO will find every way the reward can be paid without solving the
# problem. Before part 06 spends hours of TPU time on it, this part attacks our reward: we
# analyse real replies component by component, debug the bad ones, try a catalogue of
# reward-hacking tricks against an honest answer, tune and ablate the weights, and compare the
# score distributions of real GSM8K solutions with perturbed copies.
#
# **Objectives**
# - read a reply's reward breakdown with `RewardAnalyzer` and its problems with `RewardDebugger`;
# - check that an honest, correct answer beats every hacking attempt, on many problems;
# - see how weight presets change what the reward prefers;
# - measure what each term adds with an ablation: correctness only, + trace, + confidence, annealed;
# - compare the reward's distribution on gold solutions with perturbed ones.
#
# **Prerequisites**: part 03 (the rewards). Any hardware; no model is needed — the replies are
# real GSM8K solutions rewritten into the course format plus hand-written model-style replies.

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
OVERRIDES = {}  # TrainingConfig fields, e.g. {"verbosity_penalty": 0.2}
N_PROBLEMS = 200  # test problems for the gold-vs-perturbed distributions and the hacking sweep
CATALOGUE_PROBLEM = 0  # index of the test problem the hacking catalogue is shown on
STEP = None  # GRPO step whose annealed weights are used; None = the static weights
SEED = 0  # seed of the perturbations

# %% [markdown]
# ## What you need from the earlier parts
#
# The configuration (part 02, rebuilt if missing) and the rewards of part 03. The problems are
# read again from the configured data source: the test split, since nothing here trains.

# %%
from course_utils.config import load_run_config
from course_utils.data import load_gsm8k
from course_utils.env import run_dir

config = load_run_config(PROFILE, **OVERRIDES)
RUN_DIR = run_dir(config.profile)
problems = load_gsm8k("test", source=config.data_source, limit=N_PROBLEMS)
print(len(problems), "problems from", problems[0].source, "| run directory:", RUN_DIR)

# %% [markdown]
# ## 1. The analyser on model-style replies
#
# `RewardAnalyzer` scores a reply exactly as training will and keeps the breakdown. Given the
# prompt it finds the problem (gold, difficulty) in its data by itself. Here: the ten
# hand-written replies of part 03, all to the same small problem.

# %%
from course_utils.data import build_prompt
from course_utils.reward_analysis import SAMPLE_PROBLEM, SAMPLE_REPLIES, RewardAnalyzer, format_table

analyzer = RewardAnalyzer(config, data_loader=lambda: [SAMPLE_PROBLEM, *problems], step=STEP)
prompt = build_prompt(SAMPLE_PROBLEM.question)
results = {name: analyzer.analyze_response(reply, prompt=prompt) for name, reply in SAMPLE_REPLIES.items()}
rows = [{"reply": n, "total": r.total, "correct": r.breakdown.correct, **r.breakdown.components} for n, r in results.items()]
print(format_table(sorted(rows, key=lambda row: -row["total"])))

# %%
analyzer.print_breakdown(results["chatty preamble"])

# %% [markdown]
# ## 2. The debugger says what to fix
#
# `RewardDebugger.diagnose_response` turns a low score into findings a person can act on:
# missing or repeated tags, text outside the blocks, an answer that is not one number, the right
# answer written outside the tags, wrong arithmetic, repetition, over-confident wording.

# %%
from course_utils.reward_analysis import RewardDebugger

debugger = RewardDebugger(config)
for name, reply in SAMPLE_REPLIES.items():
    print(f"{name}:\n{debugger.report(reply, SAMPLE_PROBLEM.answer)}\n")

# %% [markdown]
# ## 3. Real solutions in the course format
#
# The gold solutions of the test problems, rewritten into `<reasoning>…</reasoning><answer>…</answer>`,
# are what a perfect model would write. They should be right every time and score high.

# %%
from course_utils.data import format_solution

gold_results = [analyzer.analyze_response(format_solution(ex), prompt=build_prompt(ex.question)) for ex in problems]
print({k: round(v, 3) for k, v in analyzer.summary(gold_results).items()})
weakest = min(gold_results, key=lambda r: r.total)
print(f"\nweakest gold ({weakest.total:.3f}):\n{weakest.response}\nfindings: {weakest.findings}")

# %% [markdown]
# ## 4. The reward-hacking catalogue
#
# Each row is a trick a policy could learn instead of solving the problem: spamming tags or
# step markers, stuffing the answer with numbers, empty or copied reasoning, made-up arithmetic,
# padding, endless output, the answer outside the tags, and more. Every trick is scored against
# the honest, correct answer to the same problem. The honest answer must win every row.

# %%
from course_utils.reward_analysis import catalogue_table

example = problems[CATALOGUE_PROBLEM]
catalogue = catalogue_table(config, example, step=STEP)
columns = ["attempt", "hack", "honest", "margin", "honest_wins", "format", "coherence", "correctness"]
print(example.question, "\n")
print(format_table(catalogue, columns))
assert all(row["honest_wins"] for row in catalogue), "a hacking attempt beat the honest answer"

# %%
from IPython.display import Image, display

from course_utils.plots import plot_catalogue

display(Image(filename=plot_catalogue(catalogue, RUN_DIR / "reward_hacking.png")))

# %% [markdown]
# One problem is an anecdote. The same catalogue over every loaded problem, at the start, the
# middle and the end of the annealing schedule and with the static weights:

# %%
losses, rows_checked = [], 0
for ex in problems:
    for step in (None, 0, (config.max_steps - 1) // 2, config.max_steps - 1):
        for row in catalogue_table(config, ex, step=step):
            rows_checked += 1
            if not row["honest_wins"]:
                losses.append((ex.question[:50], step, row["attempt"], round(row["margin"], 3)))
print(f"{rows_checked:,} rows on {len(problems)} problems; the honest answer lost {len(losses)}:", losses[:5])
assert not losses, "the recap below claims the honest answer always wins: look at these rows"

# %% [markdown]
# ## 5. Tuning the weights
#
# Weights decide what "better" means. The math-focused preset pays almost only for the right
# answer; the explanation-focused one pays as much for the reasoning. Compare how each ranks
# the same replies: which replies change place?

# %%
from course_utils.reward_analysis import weight_presets
from course_utils.rewards import composite_reward

presets = weight_presets(config)
rows = [{"reply": name, **{p: composite_reward(reply, SAMPLE_PROBLEM.solution, weights=w, config=config,
                                               question=SAMPLE_PROBLEM.question).total for p, w in presets.items()}}
        for name, reply in SAMPLE_REPLIES.items()]
print(format_table(rows))

# %% [markdown]
# ## 6. Ablation: what each term adds
#
# Four schemes, switched on one after the other: correctness only; + trace (the static format
# and coherence weights); + confidence (the annealed start, where part of correctness moves to
# calibration, which every reply earns unless it is wrong and over-confident: part 03); and the
# annealed weights of the last step. Four replies: a good answer with reasoning, a right answer
# with no trace, a wrong answer with a trace, and the same stated over-confidently. Read each
# column from top to bottom.

# %%
from course_utils.reward_analysis import ablation_table

ablation = ablation_table(config, example)
print(format_table(ablation))

# %% [markdown]
# The catalogue's tricks never beat the honest *right* answer, but an honest *wrong* answer can
# beat a right one given bare: calibration pays the wrong reply too, and its trace earns format
# and coherence. With the default and `cpu` weights this happens at the annealed start; the
# correctness-led `tpu` weights keep the order on this pair. Only the correctness component
# guarantees right > wrong.

# %%
right, wrong = ablation[1], ablation[2]  # "correct, no trace" and "wrong, with trace"
for scheme in [k for k in right if k != "reply"]:
    print(f"{scheme:<18} {right['reply']} {right[scheme]:.3f} | {wrong['reply']} {wrong[scheme]:.3f}"
          + ("  <- the wrong answer wins" if wrong[scheme] > right[scheme] else ""))

# %% [markdown]
# ## 7. Gold versus perturbed: score distributions
#
# A good reward separates a correct solution from a slightly broken copy of it. Each panel
# overlays the scores of the gold solutions with one perturbation: a wrong final answer, tags
# removed, steps shuffled, the reply cut in half, every step repeated, one arithmetic slip.

# %%
from statistics import mean

from course_utils.plots import plot_reward_distributions
from course_utils.reward_analysis import gold_vs_perturbed

scores = gold_vs_perturbed(problems, config, seed=SEED, step=STEP)
print(format_table([{"replies": name, "mean": mean(v), "min": min(v), "max": max(v)} for name, v in scores.items()]))
display(Image(filename=plot_reward_distributions(scores, RUN_DIR / "reward_distributions.png")))

# %% [markdown]
# ## Recap
#
# - `RewardAnalyzer` shows where a reply's reward comes from; `RewardDebugger` says what to fix.
# - Real solutions in the course format score high and are always judged correct.
# - No trick in the catalogue beats an honest, correct answer, on any of the loaded problems,
#   at any point of the annealing schedule.
# - Weight presets change the ranking of replies; the ablation shows what each term adds, and
#   that a wrong answer with a trace can outscore a bare right one in the composite.
# - Perturbed solutions score below the gold ones; losing the answer costs the most.
#
# ## Exercises
#
# 1. Invent a new hacking attempt and add it to the catalogue in a cell. Does the honest answer
#    still win? If not, which component would you change?
# 2. Find the problem with the smallest margin in the sweep of section 4. Why is its gold weak?
# 3. With `OVERRIDES = {"verbosity_penalty": 0.0}`, which rows of the catalogue get closer?
# 4. In the ablation, at which step does the bare right answer overtake the wrong answer with a
#    trace? Compute it with `annealed_weights`.
# 5. Add a perturbation that swaps two numbers in the question's restatement. Where does it
#    land in the distributions?
#
# **Questionnaire**
#
# 1. What does the hacking catalogue compare each trick against, and what must hold on every row?
# 2. Why is one problem not enough to trust the catalogue, and what does section 4 do instead?
# 3. In the ablation, which term lets the wrong answer with a trace overtake the bare right one?
# 4. Which perturbation costs the gold solutions the least, and why is that a weakness?
#
# <details><summary>Answers</summary>
#
# 1. The honest, correct answer to the same problem; the honest answer must score higher.
# 2. A margin can depend on the problem; the sweep checks every loaded problem at four weightings.
# 3. Calibration ("+ confidence"): it pays the wrong reply too, while correctness drops to 0.40.
# 4. Shuffling the steps (mean 0.89 against 0.92 in the smoke profile's run): coherence checks that
#    numbers are used later, not the order of a clean trace, so a shuffled trace keeps most credit.
#
# </details>
#
# ## Further reading
#
# - Skalse et al., *Defining and Characterizing Reward Hacking*: https://arxiv.org/abs/2209.13085
# - DeepSeek-AI, *DeepSeek-R1* (rule-based format and accuracy rewards): https://arxiv.org/abs/2501.12948
# - Hypothesis, property-based testing for Python: https://hypothesis.readthedocs.io
# - Tunix reward functions in the GRPO learner: https://github.com/google/tunix/tree/main/tunix/rl
