"""GSM8K and an offline problem generator; prompts and course-format targets (part 03).

Everything the course trains and evaluates on goes through this module:

>>> ex = load_gsm8k("train", source="synthetic", limit=1)[0]                # doctest: +SKIP
>>> ex.question, ex.answer, ex.difficulty                                  # doctest: +SKIP
>>> build_prompt(ex.question)            # the exact text the model sees, training and evaluation
>>> format_solution(ex)                  # the <reasoning>…</reasoning><answer>…</answer> target

Sources (`load_gsm8k(..., source=...)`), all real code paths:

- ``"local"``: a folder holding GSM8K's ``train.jsonl`` / ``test.jsonl`` (fields ``question``,
  ``answer``) or Kaggle's ``main_train.csv`` / ``main_test.csv``: ``COURSE_GSM8K_DIR``, else
  ``../shared/data/gsm8k`` beside the repository, else a GSM8K folder attached on Kaggle.
- ``"huggingface"``: ``datasets.load_dataset("openai/gsm8k", "main")``.
- ``"kaggle"``: ``kagglehub.dataset_download`` of ``thedevastator/grade-school-math-8k-q-a``
  (``COURSE_GSM8K_KAGGLE_DATASET`` picks another handle with the same CSV files).
- ``"synthetic"``: a seeded generator of grade-school word problems with exact answers,
  written for this course, so everything runs with no network.
- ``"auto"``: the first of local → huggingface → kaggle → synthetic that works; it prints which
  it used and why it skipped the others. A host that cannot be reached is skipped within
  about two seconds, never after a long hang.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import re
import socket
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from course_utils.env import is_kaggle
from course_utils.tokenizer import END_OF_TURN, START_OF_TURN

SPLITS = ("train", "test")
DIFFICULTIES = ("easy", "medium", "hard")
SOURCES = ("auto", "synthetic", "local", "huggingface", "kaggle")
AUTO_ORDER = ("local", "huggingface", "kaggle", "synthetic")
HF_DATASET = ("openai/gsm8k", "main")
KAGGLE_DATASET = "thedevastator/grade-school-math-8k-q-a"
REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_GSM8K = REPO_ROOT.parent / "shared" / "data" / "gsm8k"
# GSM8K's sizes; the generator makes as many problems so every profile sees the same counts.
SYNTHETIC_SIZES = {"train": 7473, "test": 1319}
PROBE_TIMEOUT_S = 2.0

# The instruction at the top of every prompt. Gemma 3 has no system role, so it opens the user
# turn (this is what Gemma's own chat template does with a system message).
SYSTEM_PROMPT = (
    "You are given a grade-school math problem. Think it through step by step and write your "
    "reasoning between <reasoning> and </reasoning>. Then give the final answer, one number "
    "only, between <answer> and </answer>."
)
PROMPT_TEMPLATE = f"{START_OF_TURN}user\n{{system}}\n\n{{question}}{END_OF_TURN}\n{START_OF_TURN}model\n"


@dataclasses.dataclass(frozen=True)
class Example:
    """One problem (part 03): the question, GSM8K's full worked solution (ending ``#### N``),
    the final answer normalised (``"1080"``, ``"-5"``, ``"0.5"``), its difficulty and where it came from."""

    question: str
    solution: str
    answer: str
    difficulty: str
    source: str


# Profiles whose run is sized for GSM8K: "auto" may not quietly fall back to the generator there.
FULL_SIZE_PROFILES = ("tpu", "gpu")


class SourceUnavailable(RuntimeError):
    """A data source cannot be used here; the message says why and how to fix it."""


# --------------------------------------------------------------------------------------------
# Answers and difficulty
# --------------------------------------------------------------------------------------------

# A written number: digits with optional thousands groups and decimals. The one pattern every
# number reader of the course builds on (answers here, reply answers and traces in rewards).
NUMBER_PATTERN = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_NUMBER = re.compile(rf"[+-]?{NUMBER_PATTERN}|[+-]?\.\d+")
_FRACTION = re.compile(r"([+-]?\d+)\s*/\s*(\d+)")
_MIXED = re.compile(r"([+-]?\d+)\s+(\d+)\s*/\s*(\d+)")
_LATEX_FRAC = re.compile(r"([+-]?)\\[dt]?frac\s*\{\s*([+-]?\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_LATEX_FRAC_SHORT = re.compile(r"([+-]?)\\[dt]?frac(\d)(\d)")
_UNICODE_MINUS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-", "\uff0d": "-"})


def _unwrap(s: str, command: str) -> str:
    """Replace every ``\\command{body}`` by ``body`` (braces matched by counting, linear time)."""
    out, i = [], 0
    while True:
        j = s.find(command + "{", i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i:j])
        depth, k = 1, j + len(command) + 1
        while k < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[k], 0)
            k += 1
        body_end = k - 1 if depth == 0 else k
        out.append(s[j + len(command) + 1: body_end])
        i = k


def strip_answer_markup(text: str) -> str:
    """Remove what wraps a number without changing it: ``\\boxed{}``, ``$``, ``\\text{}``, LaTeX
    spacing, a trailing full stop, unicode minus signs. Used for gold and model answers alike."""
    s = text.translate(_UNICODE_MINUS).strip()
    if "\\" in s:
        for command in ("\\boxed", "\\fbox", "\\text", "\\mathrm", "\\textbf", "\\mathbf"):
            if command in s:
                s = _unwrap(s, command)
        if "frac" in s:  # \frac{3}{4} -> 3/4
            for pattern in (_LATEX_FRAC, _LATEX_FRAC_SHORT):
                s = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}/{m.group(3)}", s)
        for old, new in (("\\$", "$"), ("\\%", "%"), ("\\!", ""), ("\\,", ""), ("\\left", ""),
                         ("\\right", ""), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", "")):
            s = s.replace(old, new)
    s = s.replace("$", "").strip()
    while s.endswith((".", "!")) and not s.endswith(".."):
        s = s[:-1].rstrip()
    return s


def parse_number(text: str) -> Fraction | None:
    """The exact value of `text` if it is one number, else None (part 03).

    Accepts ``1,234``, ``-5``, ``+3``, ``.5``, ``18.00``, ``50%`` (→ 50), ``$18``, ``3/4``,
    ``1 1/2``, ``\\frac{3}{4}``, ``\\boxed{18}``. No evaluation of anything else: ``2+3`` is None.
    """
    if not isinstance(text, str) or len(text) > 200:
        return None
    s = strip_answer_markup(text)
    if s.endswith("%"):
        s = s[:-1].rstrip()
    if not s:
        return None
    m = _NUMBER.fullmatch(s)
    if m:
        return Fraction(s.replace(",", "").replace("+", ""))
    for pattern in (_LATEX_FRAC, _LATEX_FRAC_SHORT):
        m = pattern.fullmatch(s)
        if m and int(m.group(3)):
            sign = -1 if m.group(1) == "-" else 1
            return sign * Fraction(int(m.group(2)), int(m.group(3)))
    m = _FRACTION.fullmatch(s)
    if m and int(m.group(2)):
        return Fraction(int(m.group(1)), int(m.group(2)))
    m = _MIXED.fullmatch(s)
    if m and int(m.group(3)):
        whole, num, den = int(m.group(1)), int(m.group(2)), int(m.group(3))
        value = abs(whole) + Fraction(num, den)
        return -value if m.group(1).startswith("-") else value
    return None


def format_number(value: Fraction) -> str:
    """The canonical text of a number: ``18``, ``-5``, ``0.25``, ``1/3`` (no commas, no trailing zeros)."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    den, k = value.denominator, 0
    while den % 2 == 0 or den % 5 == 0:
        den //= 2 if den % 2 == 0 else 5
        k += 1
    if den != 1:  # not a terminating decimal
        return f"{value.numerator}/{value.denominator}"
    scaled = abs(value.numerator) * (10**k // value.denominator)
    digits = str(scaled).rjust(k + 1, "0")
    text = f"{digits[:-k]}.{digits[-k:]}".rstrip("0").rstrip(".")
    return ("-" if value < 0 else "") + text


def canonical_number(text: str) -> str | None:
    """`parse_number` then `format_number`: ``"$1,080.00"`` → ``"1080"``; None if not one number."""
    value = parse_number(text)
    return None if value is None else format_number(value)


def gold_answer(solution: str) -> str:
    """The final answer of a GSM8K solution, from its ``#### N`` line, normalised (part 03).

    >>> gold_answer("5 + 7 = <<5+7=12>>12 apples.\\n#### 1,012")
    '1012'

    Raises ValueError when there is no ``####`` line or nothing after it.
    """
    if not isinstance(solution, str):
        raise ValueError(f"a solution must be a string, not {type(solution).__name__}")
    cut = solution.rfind("####")
    if cut < 0:
        preview = solution.strip().replace("\n", " ")[:80]
        raise ValueError(
            f"solution has no final-answer line '#### N': {preview!r}. GSM8K solutions end with "
            "'#### <number>'; pass the full solution, or the bare answer to the reward functions."
        )
    tail = solution[cut + 4:].strip().split("\n", 1)[0].strip()
    if not tail:
        raise ValueError("solution ends with '####' but no answer after it; expected '#### <number>'.")
    return canonical_number(tail) or tail


_ANNOTATION = re.compile(r"<<[^<>\n]*>>")


def count_steps(solution: str) -> int:
    """Reasoning steps of a GSM8K solution: its ``<<…>>`` calculator annotations, or its
    non-empty lines before ``####`` when it has none."""
    body = solution.split("####", 1)[0]
    n = len(_ANNOTATION.findall(body))
    return n if n else sum(1 for line in body.splitlines() if line.strip())


def difficulty_of(solution: str) -> str:
    """``"easy"`` (≤ 2 steps), ``"medium"`` (3–4) or ``"hard"`` (≥ 5), from `count_steps` (part 03).

    On GSM8K train this gives about 36 % easy, 48 % medium and 17 % hard.
    """
    steps = count_steps(solution)
    return "easy" if steps <= 2 else "medium" if steps <= 4 else "hard"


def reasoning_lines(solution: str) -> list[str]:
    """The solution's step lines before ``####``, calculator annotations removed."""
    body = _ANNOTATION.sub("", solution.split("####", 1)[0])
    return [" ".join(line.split()) for line in body.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# Prompts and targets
# --------------------------------------------------------------------------------------------


def build_prompt(question: str) -> str:
    """The prompt the model sees, in training and in evaluation alike (part 03).

    Gemma's chat template with the instruction `SYSTEM_PROMPT` at the top of the user turn
    (Gemma 3 has no system role)::

        <start_of_turn>user
        You are given a grade-school math problem. … between <answer> and </answer>.

        {question}<end_of_turn>
        <start_of_turn>model

    No ``<bos>``: Tunix's sampler and tokenizer add it. The model's reply follows the last line.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"build_prompt needs a non-empty question string, got {question!r:.60}")
    return PROMPT_TEMPLATE.format(system=SYSTEM_PROMPT, question=question.strip())


def format_solution(example: Example | str) -> str:
    """The course-format target for SFT (part 03): GSM8K's steps without ``<<…>>`` annotations
    inside ``<reasoning>``, and ``#### N`` as ``<answer>N</answer>``::

        <reasoning>
        Natalia sold 48/2 = 24 clips in May.
        …
        </reasoning>
        <answer>72</answer>

    Accepts an `Example` or a bare GSM8K solution string.
    """
    solution = example.solution if isinstance(example, Example) else example
    answer = example.answer if isinstance(example, Example) else gold_answer(solution)
    steps = "\n".join(reasoning_lines(solution))
    return f"<reasoning>\n{steps}\n</reasoning>\n<answer>{answer}</answer>"


def grpo_record(example: Example) -> dict[str, str]:
    """One GRPO dataset row for Tunix (part 06): ``prompts`` (plain string, as GRPOLearner
    wants), ``answer`` (the gold the reward functions receive), ``question`` and ``difficulty``
    (passed through to the rewards as keyword arguments)."""
    return {
        "prompts": build_prompt(example.question),
        "answer": example.answer,
        "question": example.question,
        "difficulty": example.difficulty,
    }


# --------------------------------------------------------------------------------------------
# The offline generator
# --------------------------------------------------------------------------------------------

_NAMES = [
    ("Ava", "she"), ("Liam", "he"), ("Maya", "she"), ("Noah", "he"), ("Zara", "she"),
    ("Omar", "he"), ("Lena", "she"), ("Kofi", "he"), ("Priya", "she"), ("Mateo", "he"),
    ("Hana", "she"), ("Ethan", "he"), ("Sofia", "she"), ("Yusuf", "he"), ("Chloe", "she"),
    ("Ravi", "he"), ("Ingrid", "she"), ("Diego", "he"), ("Amara", "she"), ("Felix", "he"),
    ("Nadia", "she"), ("Tomas", "he"), ("Leila", "she"), ("Jonah", "he"), ("Mei", "she"),
    ("Samir", "he"), ("Greta", "she"), ("Kenji", "he"), ("Aisha", "she"), ("Oscar", "he"),
]
_ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "beads",
          "crayons", "cards", "erasers", "buttons", "oranges", "muffins", "balloons", "coins"]
_GOODS = [("shirts", "pairs of socks", "hats"), ("notebooks", "pens", "folders"),
          ("books", "puzzles", "kites"), ("mugs", "plates", "bowls"), ("toy cars", "yo-yos", "balls")]
_THINGS = ["a new game", "lunch", "a gift", "books", "a concert ticket", "groceries", "a plant"]
_ANIMALS = [("cows", "chickens", "goats"), ("sheep", "ducks", "pigs"), ("horses", "geese", "rabbits")]


class _Steps:
    """Builds a GSM8K-style solution line by line, with ``<<expr=result>>`` annotations."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def calc(self, before: str, expr: str, value: int, after: str = "", money: bool = False) -> int:
        shown = f"{'$' if money else ''}<<{expr.replace(' ', '')}={value}>>{value}"
        self.lines.append(f"{before}{expr} = {shown}{after}".strip())
        return value

    def solution(self, answer: int) -> str:
        return "\n".join(self.lines + [f"#### {answer}"])


def _pick(rng: random.Random) -> tuple[str, str, str]:
    (name, pron), (other, _) = rng.sample(_NAMES, 2)
    return name, pron, other


def _easy(rng: random.Random) -> tuple[str, str]:
    name, pron, other = _pick(rng)
    item = rng.choice(_ITEMS)
    s = _Steps()
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(5, 90), rng.randint(3, 60)
        q = f"{name} has {a} {item}. {other} gives {name} {b} more. How many {item} does {name} have now?"
        ans = s.calc(f"{name} has ", f"{a} + {b}", a + b, f" {item} now.")
    elif kind == 1:
        a, b = rng.randint(2, 12), rng.randint(3, 24)
        q = f"{name} buys {a} boxes of {item}. Each box holds {b} {item}. How many {item} did {name} buy?"
        ans = s.calc(f"{name} bought ", f"{a} * {b}", a * b, f" {item}.")
    elif kind == 2:
        a = rng.randint(20, 150)
        b = rng.randint(1, a - 1)
        q = f"{name} had {a} {item} and gave {b} of them to {other}. How many {item} does {name} have left?"
        ans = s.calc(f"{name} has ", f"{a} - {b}", a - b, f" {item} left.")
    elif kind == 3:
        b, k = rng.randint(2, 12), rng.randint(2, 20)
        q = f"{name} shares {b * k} {item} equally among {b} friends. How many {item} does each friend get?"
        ans = s.calc("Each friend gets ", f"{b * k} / {b}", k, f" {item}.")
    elif kind == 4:
        a, b = rng.randint(2, 9), rng.randint(4, 15)
        c = rng.randint(1, a * b - 1)
        q = (f"{name} buys {a} packs of {item} with {b} {item} in each pack, then gives {c} of them "
             f"to {other}. How many {item} does {name} have left?")
        total = s.calc(f"{name} buys ", f"{a} * {b}", a * b, f" {item}.")
        ans = s.calc(f"{pron.capitalize()} has ", f"{total} - {c}", total - c, f" {item} left.")
    else:
        a, b = rng.randint(2, 8), rng.randint(2, 15)
        bill = next(x for x in (10, 20, 50, 100, 200) if x > a * b)
        q = (f"{name} buys {a} notebooks at ${b} each and pays with a ${bill} bill. "
             f"How much change does {pron} get?")
        cost = s.calc("The notebooks cost ", f"{a} * {b}", a * b, ".", money=True)
        ans = s.calc(f"{pron.capitalize()} gets ", f"{bill} - {cost}", bill - cost, " in change.", money=True)
    return q, s.solution(ans)


def _medium(rng: random.Random) -> tuple[str, str]:
    name, pron, other = _pick(rng)
    s = _Steps()
    kind = rng.randrange(5)
    if kind == 0:
        a, b, c = rng.randint(8, 25), rng.randint(2, 8), rng.randint(2, 8)
        d = rng.randint(5, a * (b + c) - 1)
        thing = rng.choice(_THINGS)
        q = (f"{name} earns ${a} an hour. {pron.capitalize()} works {b} hours on Monday and {c} hours "
             f"on Tuesday, then spends ${d} on {thing}. How much money does {pron} have left from "
             "those two days?")
        mon = s.calc(f"On Monday {name} earns ", f"{a} * {b}", a * b, ".", money=True)
        tue = s.calc("On Tuesday she earns " if pron == "she" else "On Tuesday he earns ",
                     f"{a} * {c}", a * c, ".", money=True)
        both = s.calc("Together that is ", f"{mon} + {tue}", mon + tue, ".", money=True)
        ans = s.calc("After spending, there is ", f"{both} - {d}", both - d, " left.", money=True)
    elif kind == 1:
        big, mid, small = rng.choice(_ANIMALS)
        a, b = rng.randint(3, 30), rng.randint(2, 6)
        c = rng.randint(1, a * b - 1)
        q = (f"A farm has {a} {big}. It has {b} times as many {mid} as {big}, and {c} fewer {small} "
             f"than {mid}. How many animals are on the farm?")
        m = s.calc("There are ", f"{a} * {b}", a * b, f" {mid}.")
        sm = s.calc("There are ", f"{m} - {c}", m - c, f" {small}.")
        ans = s.calc("In total there are ", f"{a} + {m} + {sm}", a + m + sm, " animals.")
    elif kind == 2:
        b = rng.randint(5, 40)
        a = rng.randint(3 * b + 10, 3 * b + 300)
        q = (f"{name} is reading a {a}-page book. {pron.capitalize()} read {b} pages yesterday and "
             "twice as many pages today. How many pages are left to read?")
        today = s.calc(f"Today {name} read ", f"{b} * 2", 2 * b, " pages.")
        done = s.calc("So far that is ", f"{b} + {today}", b + today, " pages.")
        ans = s.calc("There are ", f"{a} - {done}", a - done, " pages left.")
    elif kind == 3:
        a, b = rng.randint(5, 40), rng.randint(3, 12)
        d = rng.randint(2, 15)
        c = rng.randint(1, max(1, (a * b) // d))
        item = rng.choice(_ITEMS)
        q = (f"{name} saves ${a} every week for {b} weeks. Then {pron} buys {c} {item} that cost "
             f"${d} each. How much money does {name} have left?")
        saved = s.calc(f"{name} saves ", f"{a} * {b}", a * b, ".", money=True)
        spent = s.calc(f"The {item} cost ", f"{c} * {d}", c * d, ".", money=True)
        ans = s.calc(f"{name} has ", f"{saved} - {spent}", saved - spent, " left.", money=True)
    else:
        item = rng.choice(["muffins", "cookies", "rolls", "cupcakes", "pretzels"])
        a, b = rng.randint(3, 12), rng.randint(6, 24)
        c = rng.randint(1, a * b - 2)
        if (a * b - c) % 2:
            c += 1
        q = (f"A bakery bakes {a} trays of {item} with {b} {item} on each tray. It sells {c} in the "
             "morning and half of the rest in the afternoon. How many are left at the end of the day?")
        total = s.calc("The bakery bakes ", f"{a} * {b}", a * b, f" {item}.")
        rest = s.calc("After the morning, ", f"{total} - {c}", total - c, " are left.")
        half = s.calc("In the afternoon it sells ", f"{rest} / 2", rest // 2, ".")
        ans = s.calc("At the end of the day, ", f"{rest} - {half}", rest - half, f" {item} are left.")
    return q, s.solution(ans)


def _hard(rng: random.Random) -> tuple[str, str]:
    name, pron, other = _pick(rng)
    s = _Steps()
    kind = rng.randrange(4)
    if kind == 0:
        g1, g2, g3 = rng.choice(_GOODS)
        a, b, c = rng.randint(2, 6), rng.randint(2, 8), rng.randint(1, 4)
        p, q_, r = rng.randint(8, 30), rng.randint(2, 9), rng.randint(5, 20)
        subtotal = a * p + b * q_ + c * r
        d = rng.randint(2, max(3, subtotal // 5))
        pay = next(x for x in (50, 100, 200, 500) if x > subtotal - d)
        q = (f"{name} buys {a} {g1} at ${p} each, {b} {g2} at ${q_} each and {c} {g3} at ${r} each. "
             f"{pron.capitalize()} has a coupon for ${d} off the total and pays with ${pay}. "
             f"How much change does {name} get?")
        x1 = s.calc(f"The {g1} cost ", f"{a} * {p}", a * p, ".", money=True)
        x2 = s.calc(f"The {g2} cost ", f"{b} * {q_}", b * q_, ".", money=True)
        x3 = s.calc(f"The {g3} cost ", f"{c} * {r}", c * r, ".", money=True)
        tot = s.calc("Before the coupon the total is ", f"{x1} + {x2} + {x3}", x1 + x2 + x3, ".", money=True)
        due = s.calc("With the coupon it is ", f"{tot} - {d}", tot - d, ".", money=True)
        ans = s.calc(f"{name} gets ", f"{pay} - {due}", pay - due, " in change.", money=True)
    elif kind == 1:
        a, b, c, d = rng.randint(30, 70), rng.randint(1, 5), rng.randint(20, 60), rng.randint(1, 4)
        e = rng.choice([10, 20, 25, 30])
        f = rng.randint(2, 5)
        miles = a * b + c * d
        extra = (-miles) % e  # make the gallons whole by driving a little further
        last = f", and finally {extra} more miles to a friend's house" if extra else ""
        q = (f"{name} drives at {a} miles per hour for {b} hours, then at {c} miles per hour for {d} "
             f"hours{last}. The car uses one gallon of gas every {e} miles and gas costs ${f} per "
             "gallon. How much does the gas for the trip cost?")
        m1 = s.calc("First part: ", f"{a} * {b}", a * b, " miles.")
        m2 = s.calc("Second part: ", f"{c} * {d}", c * d, " miles.")
        tot = s.calc("The whole trip is ", f"{m1} + {m2}" + (f" + {extra}" if extra else ""),
                     m1 + m2 + extra, " miles.")
        gal = s.calc("The car uses ", f"{tot} / {e}", tot // e, " gallons.")
        ans = s.calc("The gas costs ", f"{gal} * {f}", gal * f, ".", money=True)
    elif kind == 2:
        a, p, b, q_ = rng.randint(20, 80), rng.randint(1, 4), rng.randint(10, 50), rng.randint(2, 5)
        k = rng.randint(2, 6)
        income = a * p + b * q_
        c = rng.randint(5, income - k)
        c += (income - c) % k
        q = (f"A class sells {a} cookies at ${p} each and {b} cupcakes at ${q_} each. It spent ${c} "
             f"on ingredients. The profit is shared equally among {k} clubs. How much does each club get?")
        x1 = s.calc("The cookies bring in ", f"{a} * {p}", a * p, ".", money=True)
        x2 = s.calc("The cupcakes bring in ", f"{b} * {q_}", b * q_, ".", money=True)
        tot = s.calc("Together that is ", f"{x1} + {x2}", x1 + x2, ".", money=True)
        profit = s.calc("The profit is ", f"{tot} - {c}", tot - c, ".", money=True)
        ans = s.calc("Each club gets ", f"{profit} / {k}", profit // k, ".", money=True)
    else:
        a, b, c = rng.randint(6, 40), rng.randint(2, 15), rng.randint(2, 10)
        q = (f"{name} is {a} years old. {other} is {b} years older than {name}, and their cousin is "
             f"twice as old as {other}. In {c} years, what will the sum of their three ages be?")
        o = s.calc(f"{other} is ", f"{a} + {b}", a + b, " years old.")
        cz = s.calc("The cousin is ", f"{o} * 2", 2 * o, " years old.")
        now = s.calc("Their ages now add up to ", f"{a} + {o} + {cz}", a + o + cz, ".")
        more = s.calc(f"In {c} years they add ", f"3 * {c}", 3 * c, " years between them.")
        ans = s.calc("The sum will be ", f"{now} + {more}", now + more, ".")
    return q, s.solution(ans)


_GENERATORS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "easy": _easy, "medium": _medium, "hard": _hard}
_DIFFICULTY_MIX = (("easy", 0.36), ("medium", 0.46), ("hard", 0.18))  # close to GSM8K's mix


def synthetic_problem(rng: random.Random, difficulty: str | None = None) -> Example:
    """One generated word problem with an exact answer and a GSM8K-style solution (part 03)."""
    if difficulty is None:
        difficulty = rng.choices([d for d, _ in _DIFFICULTY_MIX], [w for _, w in _DIFFICULTY_MIX])[0]
    if difficulty not in _GENERATORS:
        raise ValueError(f"difficulty={difficulty!r}; choose one of {', '.join(DIFFICULTIES)}")
    question, solution = _GENERATORS[difficulty](rng)
    return Example(question, solution, gold_answer(solution), difficulty_of(solution), "synthetic")


def _question_key(question: str) -> str:
    return " ".join(question.lower().split())


def _synthetic(split: str, limit: int | None) -> list[Example]:
    n = SYNTHETIC_SIZES[split] if limit is None else limit
    taken: set[str] = set()
    if split == "train":  # never reuse a test question
        taken = {_question_key(e.question) for e in _synthetic("test", None)}
    rng = random.Random(f"course-utils/gsm-synthetic/{split}/v1")
    out: list[Example] = []
    while len(out) < n:
        ex = synthetic_problem(rng)
        key = _question_key(ex.question)
        if key not in taken:
            taken.add(key)
            out.append(ex)
    return out


# --------------------------------------------------------------------------------------------
# Real GSM8K: local files, Hugging Face, Kaggle
# --------------------------------------------------------------------------------------------


def _rows_to_examples(rows: Iterable[dict[str, Any]], source: str, where: str) -> list[Example]:
    out = []
    for i, row in enumerate(rows, 1):
        try:
            question, solution = row["question"], row["answer"]
        except (KeyError, TypeError):
            raise ValueError(f"{where}: row {i} lacks the GSM8K fields 'question' and 'answer'") from None
        try:
            answer = gold_answer(solution)
        except ValueError as err:
            raise ValueError(f"{where}: row {i}: {err}") from None
        out.append(Example(question.strip(), solution.strip(), answer, difficulty_of(solution), source))
    return out


def read_gsm8k_folder(folder: str | os.PathLike, split: str, source: str = "local") -> list[Example]:
    """Read one split from a folder of ``{split}.jsonl`` (GSM8K's files) or ``main_{split}.csv``
    (the Kaggle dataset's files)."""
    folder = Path(folder)
    jsonl, csv_path = folder / f"{split}.jsonl", folder / f"main_{split}.csv"
    if jsonl.is_file():
        rows = []
        with jsonl.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{jsonl}: line {n} is not JSON ({err})") from None
        return _rows_to_examples(rows, source, str(jsonl))
    if csv_path.is_file():
        with csv_path.open(encoding="utf-8", newline="") as fh:
            return _rows_to_examples(list(csv.DictReader(fh)), source, str(csv_path))
    raise SourceUnavailable(f"{folder} has neither {split}.jsonl nor main_{split}.csv")


def _has_split_files(folder: Path) -> bool:
    return all((folder / f"{s}.jsonl").is_file() or (folder / f"main_{s}.csv").is_file() for s in SPLITS)


def local_gsm8k_dir() -> Path:
    """The local GSM8K folder `load_gsm8k` uses: ``COURSE_GSM8K_DIR``, else ``../shared/data/gsm8k``
    beside the repository, else a GSM8K folder attached under ``/kaggle/input``."""
    named = os.environ.get("COURSE_GSM8K_DIR", "").strip()
    if named:
        folder = Path(named).expanduser()
        if not _has_split_files(folder):
            raise SourceUnavailable(
                f"COURSE_GSM8K_DIR={named} has no train.jsonl/test.jsonl (or main_train.csv/main_test.csv); "
                "point it at a folder holding GSM8K's files, or unset it"
            )
        return folder
    candidates = [SHARED_GSM8K]
    kaggle_input = Path("/kaggle/input")
    if kaggle_input.is_dir():
        candidates += sorted(p for p in kaggle_input.glob("*") if "gsm" in p.name.lower() or "grade-school" in p.name)
        candidates += sorted(p for p in kaggle_input.glob("*/*") if "gsm" in str(p).lower())
    for folder in candidates:
        if folder.is_dir() and _has_split_files(folder):
            return folder
    raise SourceUnavailable(f"COURSE_GSM8K_DIR is not set and there is no GSM8K folder at {SHARED_GSM8K}")


_probe_cache: dict[str, bool] = {}


def host_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to `host` opens within `timeout` seconds (DNS included).

    Runs in a daemon thread so a stuck DNS lookup cannot hang the caller; results are cached
    for the process. With an HTTP(S) proxy configured it returns True and lets the client try.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    if host in _probe_cache:
        return _probe_cache[host]
    result = [False]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result[0] = True
        except Exception:  # DNS failure, refused, timed out, no route: unreachable
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    _probe_cache[host] = result[0]
    return result[0]


def _from_huggingface(split: str) -> list[Example]:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("1", "true", "True") and not host_reachable("huggingface.co"):
        raise SourceUnavailable("huggingface.co cannot be reached (no network?)")
    try:
        import datasets
    except ImportError:
        raise SourceUnavailable("the `datasets` package is not installed (pip install datasets)") from None
    try:
        ds = datasets.load_dataset(*HF_DATASET, split=split)
    except Exception as err:  # offline cache miss, rate limit, ...
        raise SourceUnavailable(f"datasets.load_dataset{HF_DATASET} failed: {str(err)[:160]}") from None
    return _rows_to_examples(ds, "huggingface", f"huggingface {HF_DATASET[0]}")


def _from_kaggle(split: str) -> list[Example]:
    handle = os.environ.get("COURSE_GSM8K_KAGGLE_DATASET", "").strip() or KAGGLE_DATASET
    if not is_kaggle() and not host_reachable("www.kaggle.com"):
        raise SourceUnavailable("www.kaggle.com cannot be reached (no network?)")
    try:
        import kagglehub
    except ImportError:
        raise SourceUnavailable("the `kagglehub` package is not installed (pip install kagglehub)") from None
    try:
        folder = Path(kagglehub.dataset_download(handle))
    except Exception as err:  # missing credentials, network, unknown handle
        raise SourceUnavailable(f"kagglehub.dataset_download({handle!r}) failed: {str(err)[:160]}") from None
    found = next((p for p in [folder, *folder.rglob("*")] if p.is_dir() and _has_split_files(p)), None)
    if found is None:
        raise SourceUnavailable(f"Kaggle dataset {handle} has no main_train.csv/main_test.csv or *.jsonl files")
    return read_gsm8k_folder(found, split, source="kaggle")


def _load_from(source: str, split: str) -> list[Example]:
    if source == "local":
        return read_gsm8k_folder(local_gsm8k_dir(), split)
    if source == "huggingface":
        return _from_huggingface(split)
    if source == "kaggle":
        return _from_kaggle(split)
    return _synthetic(split, None)


_cache: dict[tuple[str, str, str], tuple[Example, ...]] = {}


def _cached(source: str, split: str) -> tuple[Example, ...]:
    where = os.environ.get("COURSE_GSM8K_DIR", "") if source == "local" else ""
    key = (source, split, where)
    if key not in _cache:
        _cache[key] = tuple(_load_from(source, split))
    return _cache[key]


def _check_args(split: str, source: str, limit: int | None) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; choose 'train' or 'test' (validation is carved from train by load_splits)")
    if source not in SOURCES:
        raise ValueError(f"source={source!r}; choose one of {', '.join(SOURCES)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r}; use a positive integer, or None for the whole split")


def resolve_source(source: str = "auto", split: str = "train", verbose: bool = True) -> str:
    """The concrete source `auto` picks (local → huggingface → kaggle → synthetic), printing why
    it skipped the others; any other name is returned as it is."""
    _check_args(split, source, None)
    if source != "auto":
        return source
    skipped = []
    for candidate in AUTO_ORDER:
        if candidate == "synthetic":
            break
        try:
            _cached(candidate, split)
        except SourceUnavailable as err:
            skipped.append(f"{candidate}: {err}")
            continue
        if verbose:
            print(f"data: auto picked {candidate}" + _skipped_note(skipped))
        return candidate
    if verbose:
        print("data: auto picked synthetic (the offline generator)" + _skipped_note(skipped))
    return "synthetic"


def _skipped_note(skipped: Sequence[str]) -> str:
    return "" if not skipped else " — skipped " + "; ".join(skipped)


def load_gsm8k(split: str, source: str = "auto", limit: int | None = None, verbose: bool = True) -> list[Example]:
    """GSM8K's `split` ("train" or "test") as a list of `Example`, in file order (part 03).

    `source` is one of auto | local | huggingface | kaggle | synthetic (see the module help);
    `limit` keeps the first `limit` examples. A named source that cannot be used raises
    `SourceUnavailable` saying why; "auto" falls through to the next and prints its choice.
    """
    _check_args(split, source, limit)
    chosen = resolve_source(source, split, verbose=verbose)
    if chosen == "synthetic":
        examples = _synthetic(split, limit)
    else:
        examples = list(_cached(chosen, split))
    examples = examples[:limit] if limit is not None else examples
    if verbose:
        print(f"data: GSM8K {split}: {len(examples):,} examples from {chosen}")
    return examples


def load_splits(config: Any) -> dict[str, list[Example]]:
    """Train / validation / test examples for a `TrainingConfig` (part 03).

    test = the first ``config.eval_examples`` of GSM8K's test split (all when None); validation
    and train are disjoint random draws (seed ``config.seed``) from GSM8K's train split, of
    ``config.val_examples`` and ``config.train_examples`` (the rest when None). A train question
    that also appears in test is dropped, so no question is in two splits. On a full-size
    profile (`tpu`, `gpu`) "auto" finding no GSM8K raises `SourceUnavailable` rather than
    training the full run on the toy generator.
    """
    source = resolve_source(config.data_source, "train")
    if source == "synthetic" and config.data_source == "auto" and config.profile in FULL_SIZE_PROFILES:
        raise SourceUnavailable(
            f"the {config.profile!r} profile trains on GSM8K, but data_source='auto' found no copy of it and "
            "would fall back to the toy problem generator (see the lines above for why each source failed). "
            "Attach the GSM8K dataset (Kaggle: Add Input), turn the notebook's internet on, or set "
            "COURSE_GSM8K_DIR to a folder of train.jsonl / test.jsonl; data_source='synthetic' uses the "
            "generator on purpose."
        )
    test = load_gsm8k("test", source=source, limit=config.eval_examples, verbose=False)
    test_keys = {_question_key(e.question) for e in load_gsm8k("test", source=source, verbose=False)}
    pool, seen = [], set(test_keys)
    for ex in load_gsm8k("train", source=source, verbose=False):
        key = _question_key(ex.question)
        if key not in seen:
            seen.add(key)
            pool.append(ex)
    if config.val_examples >= len(pool):
        raise ValueError(
            f"val_examples={config.val_examples} leaves no training data: the {source} train split has "
            f"{len(pool)} usable examples; lower val_examples."
        )
    order = list(range(len(pool)))
    random.Random(config.seed).shuffle(order)
    val = [pool[i] for i in order[: config.val_examples]]
    rest = order[config.val_examples:]
    if config.train_examples is not None and config.train_examples > len(rest):
        print(f"data: only {len(rest)} training examples left after validation (asked for {config.train_examples})")
    train = [pool[i] for i in rest[: config.train_examples]]
    print(f"data: splits from {source}: train {len(train):,} · val {len(val):,} · test {len(test):,} (no overlap)")
    return {"train": train, "val": val, "test": test}


def by_difficulty(examples: Iterable[Example]) -> dict[str, list[Example]]:
    """The examples grouped by difficulty, in the order easy, medium, hard."""
    groups: dict[str, list[Example]] = {d: [] for d in DIFFICULTIES}
    for ex in examples:
        groups[ex.difficulty].append(ex)
    return groups
