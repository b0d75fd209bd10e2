# %% [markdown]
# # Part 03 · Data and rewards that cannot be fooled
# [![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/03_data_and_rewards.ipynb) [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/03_data_and_rewards.ipynb)
#
# GRPO learns whatever the reward pays for, so this part builds both halves of the signal with
# care: grade-school maths problems (GSM8K, or an offline generator with exact answers) and a
# reward made of small, pure, tested functions. We run each reward component on replies of the
# kinds a model really writes, see three bugs that public GRPO notebooks copy from each other,
# and plot how the weights of the reward move during training.
#
# **Objectives**
# - load GSM8K from the best available source and split it into train / validation / test;
# - read a problem's difficulty, its gold answer, its prompt and its course-format target;
# - score replies with the format, coherence, correctness, efficiency and calibration rewards;
# - see why a MULTILINE regex, first-digits extraction and a missing DOTALL make rewards lie;
# - combine the components with the configuration's weights, annealed over training;
# - call the reward functions exactly as Tunix's GRPO learner will in part 06.
#
# **Prerequisites**: part 02 (the configuration; rebuilt if missing). Any hardware: this part
# needs data, not a model, and runs in seconds.

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
OVERRIDES = {}  # TrainingConfig fields, e.g. {"data_source": "local"} or {"verbosity_penalty": 0.2}
EXAMPLES_PER_DIFFICULTY = 1  # problems shown for each of easy / medium / hard
STEP = None  # GRPO step whose annealed weights the composite uses; None = the static weights

# %% [markdown]
# ## What you need from the earlier parts
#
# The configuration saved by part 02 in the run directory (built fresh if it is not there).
# It says where the data comes from (`data_source`), how much of it to use and the reward
# weights. Nothing else: no model is loaded in this part.

# %%
from course_utils.config import load_run_config
from course_utils.env import run_dir

config = load_run_config(PROFILE, **OVERRIDES)
RUN_DIR = run_dir(config.profile)
print("data source:", config.data_source, "| run directory:", RUN_DIR)

# %% [markdown]
# ## 1. The data and where it comes from
#
# `load_gsm8k` reads GSM8K from a local folder (`COURSE_GSM8K_DIR`, or a GSM8K dataset attached
# on Kaggle) or Hugging Face, or generates problems offline with a seeded generator written for
# this course. With `"auto"` it tries them in that order and prints which one it used and why it
# skipped the others; an unreachable host is skipped in about two seconds. `load_splits` then makes three disjoint
# splits: test is GSM8K's test set, validation and train are seeded draws from its train set.

# %%
from course_utils.data import load_splits

splits = load_splits(config)
train, val, test = splits["train"], splits["val"], splits["test"]
print({name: len(rows) for name, rows in splits.items()}, "| source of the first test problem:", test[0].source)

# %% [markdown]
# ## 2. Difficulty
#
# GSM8K solutions mark each calculation as `<<48/2=24>>`. The number of such steps gives the
# difficulty: **easy** (≤ 2 steps), **medium** (3–4) or **hard** (≥ 5). Harder problems will
# also expect longer reasoning from the model (the coherence reward reads the difficulty).

# %%
from collections import Counter

from course_utils.data import DIFFICULTIES, count_steps

print("train mix:", dict(Counter(ex.difficulty for ex in train)))
for level in DIFFICULTIES:
    for ex in [ex for ex in train if ex.difficulty == level][:EXAMPLES_PER_DIFFICULTY]:
        print(f"\n[{level}, {count_steps(ex.solution)} steps, answer {ex.answer}] {ex.question}")

# %% [markdown]
# ## 3. The gold answer and the course-format target
#
# The gold is the number after `####`, normalised (`1,080` → `1080`). For supervised
# fine-tuning (part 06) the solution is rewritten into the format the model must learn: the
# steps without calculator annotations inside `<reasoning>`, the number inside `<answer>`.

# %%
from course_utils.data import format_solution, gold_answer

example = test[0]
print(example.solution, "\n\ngold:", gold_answer(example.solution), "\n")
print(format_solution(example))

# %% [markdown]
# ## 4. The prompt
#
# Gemma 3 has no system role, so the instruction goes at the top of the user turn of Gemma's
# chat template. Training and evaluation both call `build_prompt`, so the model is always asked
# the same way. The tokenizer adds `<bos>`; the model's reply follows the last line.

# %%
from course_utils.data import build_prompt

prompt = build_prompt(example.question)
print(prompt)

# %% [markdown]
# ## 5. Replies to score
#
# To see what each reward does we need replies of every kind: a clean one, one with chatter
# around the tags, one with an arithmetic slip, one cut off at the token limit, one with no tags…
# `SAMPLE_REPLIES` holds ten such replies to one small problem (the answer is 72), written the
# way small models write.

# %%
from course_utils.reward_analysis import SAMPLE_PROBLEM, SAMPLE_REPLIES

print(SAMPLE_PROBLEM.question, "| gold:", SAMPLE_PROBLEM.answer)
for name, reply in list(SAMPLE_REPLIES.items())[:3]:
    print(f"\n--- {name} ---\n{reply}")

# %% [markdown]
# ## 6. Format: structure, with partial credit
#
# `format_reward` gives 1.0 only to exactly one `<reasoning>` block followed by exactly one
# `<answer>` block with nothing but whitespace around them. Partial credit: 0.1 per tag present
# exactly once, 0.2 for the right order, 0.1 each for nothing before, between and after, 0.1
# for both blocks non-empty. Tags repeated or out of place earn nothing.

# %%
from course_utils.rewards import format_reward

for name, reply in SAMPLE_REPLIES.items():
    print(f"{format_reward(reply):.2f}  {name}")

# %% [markdown]
# ## 7. Three bugs that travel between GRPO notebooks
#
# Public GRPO tutorials copy reward code from each other, bugs included. Here are the three,
# in their usual form, on inputs that break them: a `MULTILINE` anchor that accepts chatter
# around the tags, extraction that takes the first run of digits, and a regex without
# `DOTALL` that cannot see multi-line reasoning.

# %%
import re

chatty = SAMPLE_REPLIES["chatty preamble"]
buggy_format = re.compile(r"^<reasoning>.*?</reasoning>\s*<answer>.*?</answer>$", re.MULTILINE | re.DOTALL)
print("MULTILINE regex says exact format:", bool(buggy_format.search(chatty)),
      "| format_reward:", format_reward(chatty))
no_dotall = re.compile(r"<reasoning>.*</reasoning>\s*<answer>.*</answer>")
clean = SAMPLE_REPLIES["clean"]
print("regex without DOTALL matches multi-line reasoning:", bool(no_dotall.search(clean)),
      "| format_reward:", format_reward(clean))

# %%
from course_utils.rewards import extract_answer

for text in ["-5", "1,234", "3 apples, 12 in total"]:
    first_digits = re.search(r"\d+", text).group()
    ours = extract_answer(f"<answer>{text}</answer>")
    print(f"{text!r:28} first run of digits: {first_digits:>5} | extract_answer: {ours}")

# %% [markdown]
# ## 8. Extracting and checking the answer
#
# `extract_answer` reads the *last* `<answer>` block and normalises it: commas, `$`, units,
# `%`, trailing `.0`, fractions, negative numbers and `\boxed{}`. A block with more than three
# numbers is answer stuffing and counts as no number. `is_correct` compares numbers exactly, as
# fractions; anything else (words, or a math expression such as `\sqrt{5184}`) only as text, never
# evaluated: the course's answers are numbers. Text outside the tags never counts.

# %%
from course_utils.rewards import is_correct

for answer in ["72", "$72.00", "72 muffins", "\\boxed{72}", "\\sqrt{5184}", "144/2", "70, 71, 72, 73", "seventy-two"]:
    reply = f"<answer>{answer}</answer>"
    print(f"{answer:>16} -> {extract_answer(reply)!s:>16}  correct: {is_correct(reply, SAMPLE_PROBLEM.solution)}")
print("no tags:", is_correct(SAMPLE_REPLIES["no tags"], "72"))

# %% [markdown]
# ## 9. Coherence: steps that lead somewhere
#
# `coherence_reward` reads the reasoning: distinct steps that work with numbers (enough for
# the difficulty), equations whose arithmetic is right, whose numbers come from the question
# or earlier steps and whose results are used later, connectives such as "so" and "then", and
# whether the reasoning reaches the answer. Bare step markers and repeated lines earn nothing.

# %%
from course_utils.rewards import coherence_reward

q = SAMPLE_PROBLEM.question
markers = "<reasoning>\n" + "\n".join(f"Step {i}:" for i in range(1, 9)) + "\n</reasoning>\n<answer>72</answer>"
repeated = "<reasoning>\n" + "48 + 24 = 72\n" * 8 + "</reasoning>\n<answer>72</answer>"
for name, reply in [("clean", clean), ("arithmetic slip", SAMPLE_REPLIES["arithmetic slip"]),
                    ("step-marker spam", markers), ("one line repeated", repeated)]:
    print(f"{coherence_reward(reply, 'easy', q):.2f}  {name}")

# %% [markdown]
# ## 10. Correctness, efficiency, calibration, verbosity
#
# `correctness_reward` is 0 for a wrong answer and 0.7 + 0.3 × reasoning depth (the coherence)
# for a right one, so *on this component* a wrong answer never outscores a right one (the
# composite is another matter: section 12). `efficiency_reward` likes 20–250 words (weight 0 by
# default). `calibration_reward` is 1 for every reply except a wrong one stated
# over-confidently. `verbosity` measures over-long or looping replies; the composite subtracts
# `config.verbosity_penalty` × it.

# %%
from course_utils.rewards import calibration_reward, correctness_reward, efficiency_reward, verbosity

print(f"{'reply':<28}{'correct':>8}{'effic.':>8}{'calib.':>8}{'verbose':>8}")
for name, reply in SAMPLE_REPLIES.items():
    scores = (correctness_reward(reply, "72", "easy", q), efficiency_reward(reply),
              calibration_reward(reply, "72"), verbosity(reply))
    print(f"{name:<28}" + "".join(f"{s:>8.2f}" for s in scores))

# %% [markdown]
# Two things this table shows that the names hide:
#
# - **Calibration pays nearly everyone.** It is 1 for every reply, right or wrong, unless a
#   wrong answer is worded over-confidently; with weight w it adds +w to almost every reply.
# - **The length half of `verbosity` starts at 400 words** (`VERBOSE_WORDS`; full at 1,200). In
#   Gemma 3's vocabulary a word costs at least one token (the only piece spanning two words is
#   `>▁</`), and the course's text runs at ≈ 0.43 (synthetic) to 0.50 (GSM8K) words per token,
#   0.72 for the wordiest of 500 GSM8K targets (measured with the 270M's tokenizer,
#   tests/test_lessons.py). A reply cut at 160 tokens (`cpu`) has at most 160 words, one cut at
#   512 (`tpu`) about 260, at most ≈ 370: neither reaches 400. Only the looping half acts.

# %%
from course_utils.config import TrainingConfig
from course_utils.rewards import VERBOSE_WORDS

paid = {name: calibration_reward(reply, "72") for name, reply in SAMPLE_REPLIES.items()}
print(f"calibration 1.0 for {sum(v == 1.0 for v in paid.values())} of {len(paid)} replies;"
      f" 0 for: {[n for n, v in paid.items() if v < 1.0]}")
for name in ("cpu", "tpu"):
    limit = TrainingConfig.for_profile(name).max_generation_length
    print(f"{name}: {limit} tokens ≈ {0.50 * limit:.0f} words at 0.50 words/token; length penalty from {VERBOSE_WORDS[0]} words")
print(f"verbosity of one line repeated 8 times (the looping half): {verbosity(repeated):.2f}")

# %% [markdown]
# ## 11. The composite reward
#
# `composite_reward` weighs the components with the configuration's weights (format 0.25,
# coherence 0.20, correctness 0.55, efficiency 0 by default) and returns the total with a
# breakdown; `print_breakdown` (used again in part 05) prints it as a table.

# %%
from course_utils.reward_analysis import print_breakdown
from course_utils.rewards import composite_reward

breakdown = composite_reward(SAMPLE_REPLIES["chatty preamble"], SAMPLE_PROBLEM.solution, step=STEP,
                             config=config, question=q)
print_breakdown(breakdown)

# %% [markdown]
# ## 12. Annealing the weights
#
# Early in training the model must first learn the format; later, being right should matter
# most. With `anneal_reward_weights`, the trace weight (format + coherence) falls from
# `anneal_trace_weight_start` to `_end` and correctness rises from `anneal_correct_weight_start`
# to `_end`, linearly from the first GRPO step (0) to the last (`max_steps` − 1), which pays
# exactly the end weights (`final_weights`; part 07 scores replies with them); calibration gets
# the rest, so the weights always sum to 1.
#
# At step 0 the weights look like the static ones with 0.15 of correctness moved to
# calibration — but it is not the same money. Calibration pays its weight to nearly every reply
# (section 10), right or wrong, so a wrong reply earns +0.15 it did not earn before, and the
# gap between a right and a wrong answer on correctness shrinks from 0.55 × c to 0.40 × c. In
# the composite a wrong answer *can* outscore a right one: with the default (and `cpu`) weights
# at step 0, a wrong answer with a tidy trace beats a right answer given bare. The correctness-
# led `tpu` weights keep this pair in order, which is one reason they were chosen.

# %%
from IPython.display import Image, display

from course_utils.plots import plot_annealing
from course_utils.rewards import annealed_weights

for step in (0, (config.max_steps - 1) // 2, config.max_steps - 1):
    print(f"step {step:>4}:", {k: round(v, 3) for k, v in annealed_weights(config, step).items()})
display(Image(filename=plot_annealing(config, RUN_DIR / "reward_annealing.png")))

# %%
bare_right, tidy_wrong = "<answer>72</answer>", SAMPLE_REPLIES["misread the question"]
for name in ("cpu", "tpu"):
    c = TrainingConfig.for_profile(name)
    for label, step in (("static", None), ("annealed, step 0", 0)):
        right, wrong = (composite_reward(r, SAMPLE_PROBLEM.solution, config=c, step=step, question=q).total
                        for r in (bare_right, tidy_wrong))
        print(f"{name} {label:<17} right, bare {right:.3f} | wrong, tidy trace {wrong:.3f}"
              + ("  <- wrong outscores right" if wrong > right else ""))

# %% [markdown]
# ## 13. The rewards as Tunix calls them
#
# Tunix's GRPO learner calls each reward function as `fn(prompts, completions, answer, **kwargs)`
# with the dataset's other columns in `kwargs`, and adds up what they return. `make_reward_fns`
# gives one function per weighted component (plus the verbosity penalty), so the sum is the
# composite and Tunix logs each part. A closure passes the training step for annealing.

# %%
from course_utils.data import grpo_record
from course_utils.rewards import make_reward_fns

record = grpo_record(SAMPLE_PROBLEM)
fns = make_reward_fns(config, step_fn=lambda: 0)
completions = [SAMPLE_REPLIES[n] for n in ("clean", "arithmetic slip", "no tags", "chatty preamble")]
columns = {k: [v] * len(completions) for k, v in record.items() if k != "prompts"}
per_fn = {fn.__name__: fn(prompts=[record["prompts"]] * 4, completions=completions, **columns) for fn in fns}
for name, values in per_fn.items():
    print(f"{name:<20}", [round(v, 3) for v in values])
print(f"{'sum = reward':<20}", [round(sum(v), 3) for v in zip(*per_fn.values())])

# %% [markdown]
# ## Recap
#
# - `load_splits` gives disjoint train / validation / test sets from local GSM8K, Hugging Face
#   or the offline generator, and says which it used.
# - Difficulty comes from the number of solution steps; the gold from `#### N`; the prompt from
#   `build_prompt`, the same in training and evaluation.
# - Each reward component is a pure function of the text, returning a score in [0, 1].
# - MULTILINE anchors, first-digits extraction and a missing DOTALL make rewards lie; ours are
#   tested against exactly those inputs.
# - The composite weighs the components; annealing moves weight from the trace to correctness.
#   Calibration pays nearly every reply, so a wrong answer can outscore a right one in the
#   composite (never in `correctness_reward`); the verbosity penalty's length half is out of reach
#   of 160/512-token replies.
# - `make_reward_fns` plugs the rewards into Tunix, whose sum of functions is our composite.
#
# ## Exercises
#
# 1. Write a reply that scores exactly 0.5 on `format_reward`. Which pieces of credit did you earn?
# 2. Give `extract_answer` an answer it reads wrongly. Is the reply one a model would write?
# 3. Set `OVERRIDES = {"anneal_trace_weight_end": 0.35}` and re-plot the annealing. What does
#    the calibration weight do, and why?
# 4. Why does `coherence_reward` need the question to tell a made-up chain of sums from real steps?
# 5. Set `STEP = config.max_steps` in the parameters. Which component's contribution grows?
#
# **Questionnaire**
#
# 1. Why must the answer be read from the *last* `<answer>` block, and why not with a MULTILINE regex?
# 2. Which replies does `calibration_reward` pay 1.0, and what does that do to a wrong answer's composite?
# 3. Can a wrong answer outscore a right one? On which component never, and in the composite when?
# 4. A `cpu` reply stops at 160 tokens. Can the length half of the verbosity penalty act on it?
# 5. What does Tunix do with the values the functions of `make_reward_fns` return?
#
# <details><summary>Answers</summary>
#
# 1. A reply may mention other numbers (or draft answers) before its final one; a MULTILINE
#    `^…$` matches inside a longer text, so chatter around the tags would still pass.
# 2. Every reply except a wrong one worded over-confidently (9 of the 10 samples): a wrong answer
#    gets the calibration weight (0.15 by default) for free.
# 3. Never on `correctness_reward` (0 against ≥ 0.7). In the composite, yes: with the default
#    weights at step 0 a wrong reply with a tidy trace beats a bare right answer (section 12).
# 4. No: a word is at least one token, so 160 tokens are at most 160 words, and the penalty
#    starts at 400 words. Only its looping half can act.
# 5. It adds them up per reply: the sum is the composite reward, and each function is logged.
#
# </details>
#
# ## Further reading
#
# - Cobbe et al., *Training Verifiers to Solve Math Word Problems* (GSM8K): https://arxiv.org/abs/2110.14168
# - GSM8K on Hugging Face: https://huggingface.co/datasets/openai/gsm8k
# - Gemma prompt formatting: https://ai.google.dev/gemma/docs/core/prompt-structure
# - Math-Verify: https://github.com/huggingface/Math-Verify
# - Python `re` flags (MULTILINE, DOTALL): https://docs.python.org/3/library/re.html#flags
