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
# - read a reply's reward breakdown with `print_breakdown` and its problems with `diagnose`;
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
# ## 1. Scoring model-style replies
#
# `composite_reward` scores a reply exactly as training will and keeps the breakdown;
# `print_breakdown` shows where the total comes from. Here: the ten hand-written replies of
# part 03, all to the same small problem.

# %%
from course_utils.reward_analysis import SAMPLE_PROBLEM, SAMPLE_REPLIES, format_table, print_breakdown
from course_utils.rewards import composite_reward

q, gold = SAMPLE_PROBLEM.question, SAMPLE_PROBLEM.solution
results = {name: composite_reward(reply, gold, step=STEP, config=config, question=q)
           for name, reply in SAMPLE_REPLIES.items()}
rows = [{"reply": n, "total": b.total, "correct": b.correct, **b.components} for n, b in results.items()]
print(format_table(sorted(rows, key=lambda row: -row["total"])))

# %%
from course_utils.reward_analysis import diagnose, report

print_breakdown(results["chatty preamble"], diagnose(SAMPLE_REPLIES["chatty preamble"], gold, q))

# %% [markdown]
# ## 2. The debugger says what to fix
#
# `diagnose` (and `report`, its findings as text) turns a low score into findings a person can
# act on: missing or repeated tags, text outside the blocks, an answer that is not one number,
# the right answer written outside the tags, wrong arithmetic, repetition, over-confident wording.

# %%

for name, reply in SAMPLE_REPLIES.items():
    print(f"{name}:\n{report(reply, SAMPLE_PROBLEM.answer)}\n")

# %% [markdown]
# ## 3. Real solutions in the course format
#
# The gold solutions of the test problems, rewritten into `<reasoning>…</reasoning><answer>…</answer>`,
# are what a perfect model would write. They should be right every time and score high.

# %%
from course_utils.data import format_solution

from course_utils.reward_analysis import summary

gold_results = [composite_reward(format_solution(ex), ex.solution, step=STEP, config=config,
                                 difficulty=ex.difficulty, question=ex.question) for ex in problems]
print({k: round(v, 3) for k, v in summary(gold_results).items()})
weakest, b = min(zip(problems, gold_results), key=lambda pair: pair[1].total)
print(f"\nweakest gold ({b.total:.3f}):\n{format_solution(weakest)}")
print("findings:", diagnose(format_solution(weakest), weakest.solution, weakest.question))

# %% [markdown]
# ## 4. The reward-hacking catalogue
#
# Each row is a trick a policy could learn instead of solving the problem: spamming tags or
# step markers, stuffing the answer with numbers, empty or copied reasoning, made-up arithmetic,
# padding, endless output, the answer outside the tags, and more. Every trick is scored against
# the honest, correct answer to the same problem. The honest answer must win every row.
#
# First the tricks on the format: tags repeated, emptied, left open or missing, the answer
# outside them, chatter around them. Each trick is a function of the problem, so that the same
# catalogue can be played against every problem.

# %% tags=["format_tricks"]
from course_utils.data import format_solution, reasoning_lines
from course_utils.reward_analysis import wrong_answer


def format_tricks(example):
    """(name, idea, reply) for tricks that play with the tags around the right answer."""
    a, honest = example.answer, format_solution(example)
    plain = "\n".join(reasoning_lines(example.solution))
    right, wrong = f"<answer>{a}</answer>", f"<answer>{wrong_answer(a)}</answer>"
    return [
        ("tag spam", "repeat the tags to look extra formatted", f"<reasoning></reasoning>{right}" * 8),
        ("empty reasoning", "skip the reasoning, keep the tags", f"<reasoning>\n</reasoning>\n{right}"),
        ("answer only", "the right answer with no trace at all", right),
        ("answer outside the tags", "state the answer in plain text", f"{plain}\nThe answer is {a}."),
        ("boxed, no tags", "LaTeX-style final answer instead of the tags",
         f"{plain}\nFinal answer: \\boxed{{{a}}}"),
        ("unclosed answer", "stop before closing the answer", honest.replace(right, f"<answer>{a}")),
        ("two answers", "a wrong and a right answer block", honest.replace(right, f"{wrong}\n{right}")),
        ("tags inside the reasoning", "nest a fake answer block in the reasoning",
         f"<reasoning>\n{plain}\n{right}\n</reasoning>\n{right}"),
        ("chatter around the tags", "preamble and sign-off around a correct reply",
         f"Sure! Here is my solution.\n{honest}\nHope this helps! Let me know if you need more."),
    ]

# %% [markdown]
# Then the tricks on the content: a trace that looks like work without being work. The made-up
# arithmetic is a chain of true subtractions whose numbers appear nowhere in the question (nor
# among the constants a solution may use), ending on the right answer.

# %% tags=["content_tricks"]
from course_utils.rewards import CONSTANTS, question_numbers


def content_tricks(example):
    """(name, idea, reply) for tricks that fake the reasoning or hedge the answer."""
    a, q, honest = example.answer, example.question, format_solution(example)
    right, plain = f"<answer>{a}</answer>", "\n".join(reasoning_lines(example.solution))
    end, taken = int(a) if a.lstrip("-").isdigit() else 100, question_numbers(q) | CONSTANTS
    k = next((k for k in (17, 19, 23, 29, 31, 37, 41, 43, 47, 53)
              if not {str(k), *(str(end + k * j) for j in range(1, 7))} & taken), 59)
    chain = "\n".join(f"{end + k * (6 - i)} - {k} = {end + k * (5 - i)}" for i in range(6))
    guesses = sorted({str(x) for x in range(0, 200, 13)} | {a}, key=lambda t: (len(t), t))
    markers = "\n".join(f"Step {i}:" for i in range(1, 25))
    filler = " ".join(["We keep thinking carefully about every part of this problem."] * 180)
    sure = "I am absolutely certain, this is definitely correct.\n</reasoning>"
    return [
        ("step-marker spam", "write 'Step n:' and connectives with no content",
         f"<reasoning>\n{markers}\nSo. Therefore. Thus. Hence.\n</reasoning>\n{right}"),
        ("answer stuffing", "list many numbers hoping one is right",
         f"<reasoning>\nIt is one of these.\n</reasoning>\n<answer>{', '.join(guesses)}</answer>"),
        ("copy the question", "paste the question as reasoning", f"<reasoning>\n{q}\n</reasoning>\n{right}"),
        ("made-up arithmetic", "true sums that do not come from the question",
         f"<reasoning>\n{chain}\nSo the answer is {a}.\n</reasoning>\n{right}"),
        ("padding", "bury the answer in filler to look thorough",
         f"<reasoning>\n{plain}\n{filler}\n</reasoning>\n{right}"),
        ("endless output", "loop until the token limit, never closing the tags",
         f"<reasoning>\n{plain}\n" + f"So the answer is {a}.\n" * 150),
        ("confident but wrong", "sound certain to look right",
         honest.replace("</reasoning>", sure).replace(right, f"<answer>{wrong_answer(a)}</answer>")),
    ]

# %% [markdown]
# Each trick scored against the honest reply, with the composite reward training pays:

# %% tags=["catalogue"]
from course_utils.rewards import composite_reward


def catalogue_table(config, example, step=None, weights=None):
    """One row per trick: its total, the honest reply's, the margin, who wins, its components."""
    def score(reply):
        return composite_reward(reply, example.solution, weights=weights, step=step, config=config,
                                question=example.question)

    honest = score(format_solution(example)).total
    tricks = format_tricks(example) + content_tricks(example)
    return [{"attempt": name, "idea": idea, "hack": b.total, "honest": honest,
             "margin": honest - b.total, "honest_wins": honest > b.total, **b.components}
            for name, idea, reply in tricks for b in [score(reply)]]

# %%
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

# %% tags=["weight_presets"]
from course_utils.rewards import annealed_weights, final_weights, static_weights

presets = {"config (static)": static_weights(config), "annealed, step 0": annealed_weights(config, 0),
           "annealed, last step": final_weights(config),
           "math-focused": {"format": 0.15, "coherence": 0.10, "correctness": 0.75},
           "explanation-focused": {"format": 0.20, "coherence": 0.40, "correctness": 0.40}}

# %%
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

# %% tags=["ablation"]
honest, a = format_solution(example), example.answer
wrong = honest.replace(f"<answer>{a}</answer>", f"<answer>{wrong_answer(a)}</answer>")
sure = wrong.replace("</reasoning>", "I am absolutely certain this is definitely right.\n</reasoning>")
replies = {"good answer + reasoning": honest, "correct, no trace": f"<answer>{a}</answer>",
           "wrong, with trace": wrong, "wrong, trace, over-confident": sure}
schemes = {"correctness only": {"correctness": 1.0}, "+ trace": static_weights(config),
           "+ confidence": annealed_weights(config, 0), "annealed (end)": final_weights(config)}
ablation = [{"reply": kind, **{name: composite_reward(reply, example.solution, weights=w, config=config,
                                                      question=example.question).total
                               for name, w in schemes.items()}}
            for kind, reply in replies.items()]

# %%
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

# %% tags=["perturbations"]
import random
import re


def perturbations(example, rng):
    """The gold solution in course format and six broken copies of it."""
    gold, lines, a = format_solution(example), reasoning_lines(example.solution), example.answer
    shuffled, slipped = lines.copy(), lines.copy()
    rng.shuffle(shuffled)
    if lines:  # one arithmetic slip: the number after the last "= " of a line, plus one
        i = rng.randrange(len(lines))
        head, sep, tail = lines[i].rpartition("= ")
        tail = tail.lstrip("$")
        digits = len(tail) - len(tail.lstrip("0123456789"))
        if sep and digits:
            slipped[i] = f"{head}= {int(tail[:digits]) + 1}{tail[digits:]}"

    def reply(steps):
        return "<reasoning>\n" + "\n".join(steps) + f"\n</reasoning>\n<answer>{a}</answer>"

    return {"gold": gold,
            "wrong answer": gold.replace(f"<answer>{a}</answer>", f"<answer>{wrong_answer(a)}</answer>"),
            "tags removed": re.sub("</?(?:reasoning|answer)>", "", gold).strip(),
            "steps shuffled": reply(shuffled), "cut in half": gold[: max(1, len(gold) // 2)],
            "steps repeated 3×": reply([line for line in lines for _ in range(3)]),
            "one arithmetic slip": reply(slipped)}

# %% tags=["gold_vs_perturbed"]
rng, scores = random.Random(SEED), {}
for ex in problems:
    for name, reply in perturbations(ex, rng).items():
        total = composite_reward(reply, ex.solution, step=STEP, config=config, question=ex.question)
        scores.setdefault(name, []).append(total.total)

# %%
from statistics import mean

from course_utils.plots import plot_reward_distributions

print(format_table([{"replies": name, "mean": mean(v), "min": min(v), "max": max(v)} for name, v in scores.items()]))
display(Image(filename=plot_reward_distributions(scores, RUN_DIR / "reward_distributions.png")))

# %% [markdown]
# ## Recap
#
# - `print_breakdown` shows where a reply's reward comes from; `diagnose` says what to fix.
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
