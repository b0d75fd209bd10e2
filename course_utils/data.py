"""GSM8K and an offline problem generator; prompts and course-format targets (part 03).

`load_gsm8k(split, source)` reads GSM8K from a local folder (``"local"``: ``COURSE_GSM8K_DIR``,
else ``../shared/data/gsm8k``, else a GSM8K input on Kaggle), from Hugging Face
(``"huggingface"``), or generates seeded word problems with exact answers (``"synthetic"``);
``"auto"`` takes the first that works, in that order, and prints why it skipped the others.
"""

from __future__ import annotations

import contextlib
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
from typing import Any, Iterable

from course_utils.tokenizer import END_OF_TURN, START_OF_TURN

SPLITS = ("train", "test")
DIFFICULTIES = ("easy", "medium", "hard")
SOURCES = ("auto", "synthetic", "local", "huggingface")
HF_DATASET = ("openai/gsm8k", "main")
SHARED_GSM8K = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gsm8k"
SYNTHETIC_SIZES = {"train": 7473, "test": 1319}  # GSM8K's, so every profile sees the same counts
FULL_SIZE_PROFILES = ("tpu", "gpu")  # "auto" may not fall back to the generator there
PROBE_TIMEOUT_S = 2.0

# Gemma 3 has no system role: the instruction opens the user turn, as Gemma's chat template does.
SYSTEM_PROMPT = (
    "You are given a grade-school math problem. Think it through step by step and write your "
    "reasoning between <reasoning> and </reasoning>. Then give the final answer, one number "
    "only, between <answer> and </answer>."
)
PROMPT_TEMPLATE = f"{START_OF_TURN}user\n{{system}}\n\n{{question}}{END_OF_TURN}\n{START_OF_TURN}model\n"


@dataclasses.dataclass(frozen=True)
class Example:
    """One problem (part 03): question, GSM8K's worked solution (ending ``#### N``), the final
    answer normalised (``"1080"``, ``"0.5"``), its difficulty and its source."""

    question: str
    solution: str
    answer: str
    difficulty: str
    source: str


class SourceUnavailable(RuntimeError):
    """A data source cannot be used here; the message says why and how to fix it."""


# --- answers and difficulty -------------------------------------------------------------------

# A written number: digits with optional thousands groups and decimals. The one pattern every
# number reader of the course builds on (answers here, reply answers and traces in rewards).
NUMBER_PATTERN = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_NUMBER = re.compile(rf"[+-]?{NUMBER_PATTERN}|[+-]?\.\d+")
_FRACTION = re.compile(r"([+-]?\d+)\s*/\s*(\d+)")
_MIXED = re.compile(r"([+-]?\d+)\s+(\d+)\s*/\s*(\d+)")
_LATEX_FRACS = (re.compile(r"([+-]?)\\[dt]?frac\s*\{\s*([+-]?\d+)\s*\}\s*\{\s*(\d+)\s*\}"),
                re.compile(r"([+-]?)\\[dt]?frac(\d)(\d)"))
_UNICODE_MINUS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-", "\uff0d": "-"})
_LATEX_NOISE = (("\\$", "$"), ("\\%", "%"), ("\\!", ""), ("\\,", ""), ("\\left", ""),
                ("\\right", ""), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""))
_ANNOTATION = re.compile(r"<<[^<>\n]*>>")


def _unwrap(s: str, command: str) -> str:
    """Replace every ``\\command{body}`` by ``body`` (braces matched by counting, linear time)."""
    out, i = [], 0
    while (j := s.find(command + "{", i)) >= 0:
        out.append(s[i:j])
        depth, k = 1, j + len(command) + 1
        while k < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[k], 0)
            k += 1
        out.append(s[j + len(command) + 1: k - 1 if depth == 0 else k])
        i = k
    return "".join(out) + s[i:]


def strip_answer_markup(text: str) -> str:
    """Remove what wraps a number without changing it: ``\\boxed{}``, ``$``, ``\\text{}``, LaTeX
    spacing, a trailing full stop, unicode minus signs. Used for gold and model answers alike."""
    s = text.translate(_UNICODE_MINUS).strip()
    if "\\" in s:
        for command in ("\\boxed", "\\fbox", "\\text", "\\mathrm", "\\textbf", "\\mathbf"):
            if command in s:
                s = _unwrap(s, command)
        for pattern in _LATEX_FRACS:  # \frac{3}{4} -> 3/4
            s = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}/{m.group(3)}", s)
        for old, new in _LATEX_NOISE:
            s = s.replace(old, new)
    s = s.replace("$", "").strip()
    while s.endswith((".", "!")) and not s.endswith(".."):
        s = s[:-1].rstrip()
    return s


def parse_number(text: str) -> Fraction | None:
    """The exact value of `text` if it is one number, else None (part 03): ``1,234``, ``-5``,
    ``.5``, ``50%`` (→ 50), ``$18``, ``3/4``, ``1 1/2``, ``\\frac{3}{4}``; ``2+3`` is None."""
    if not isinstance(text, str) or len(text) > 200:
        return None
    s = strip_answer_markup(text)
    s = s[:-1].rstrip() if s.endswith("%") else s
    if _NUMBER.fullmatch(s):
        return Fraction(s.replace(",", "").replace("+", ""))
    if (m := _FRACTION.fullmatch(s)) and int(m.group(2)):
        return Fraction(int(m.group(1)), int(m.group(2)))
    if (m := _MIXED.fullmatch(s)) and int(m.group(3)):
        value = abs(int(m.group(1))) + Fraction(int(m.group(2)), int(m.group(3)))
        return -value if m.group(1).startswith("-") else value
    return None


def format_number(value: Fraction) -> str:
    """The canonical text of a number: ``18``, ``-5``, ``0.25``, ``1/3`` (no commas or trailing zeros)."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    den, k = value.denominator, 0
    while den % 2 == 0 or den % 5 == 0:
        den //= 2 if den % 2 == 0 else 5
        k += 1
    if den != 1:  # not a terminating decimal
        return f"{value.numerator}/{value.denominator}"
    digits = str(abs(value.numerator) * (10**k // value.denominator)).rjust(k + 1, "0")
    return ("-" if value < 0 else "") + f"{digits[:-k]}.{digits[-k:]}".rstrip("0").rstrip(".")


def canonical_number(text: str) -> str | None:
    """`parse_number` then `format_number`: ``"$1,080.00"`` → ``"1080"``; None if not one number."""
    value = parse_number(text)
    return None if value is None else format_number(value)


def gold_answer(solution: str) -> str:
    """The final answer of a GSM8K solution, from its ``#### N`` line, normalised (part 03).
    Raises ValueError when there is no ``####`` line or nothing after it."""
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


def count_steps(solution: str) -> int:
    """Reasoning steps of a GSM8K solution: its ``<<…>>`` calculator annotations, or its
    non-empty lines before ``####`` when it has none."""
    body = solution.split("####", 1)[0]
    return len(_ANNOTATION.findall(body)) or sum(1 for line in body.splitlines() if line.strip())


def difficulty_of(solution: str) -> str:
    """``"easy"`` (≤ 2 steps), ``"medium"`` (3–4) or ``"hard"`` (≥ 5), from `count_steps` (part 03)."""
    steps = count_steps(solution)
    return "easy" if steps <= 2 else "medium" if steps <= 4 else "hard"


def reasoning_lines(solution: str) -> list[str]:
    """The solution's step lines before ``####``, calculator annotations removed."""
    body = _ANNOTATION.sub("", solution.split("####", 1)[0])
    return [" ".join(line.split()) for line in body.splitlines() if line.strip()]


# --- prompts and targets ----------------------------------------------------------------------

def build_prompt(question: str) -> str:
    """The prompt the model sees in training and evaluation alike (part 03): Gemma's chat
    template, `SYSTEM_PROMPT` atop the user turn. No ``<bos>``: Tunix's tokenizer adds it."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"build_prompt needs a non-empty question string, got {question!r:.60}")
    return PROMPT_TEMPLATE.format(system=SYSTEM_PROMPT, question=question.strip())


def format_solution(example: Example | str) -> str:
    """The SFT target (part 03) of an `Example` or a bare GSM8K solution: its steps without
    ``<<…>>`` inside ``<reasoning>…</reasoning>``, then ``<answer>N</answer>``."""
    solution = example.solution if isinstance(example, Example) else example
    answer = example.answer if isinstance(example, Example) else gold_answer(solution)
    steps = "\n".join(reasoning_lines(solution))
    return f"<reasoning>\n{steps}\n</reasoning>\n<answer>{answer}</answer>"


def grpo_record(example: Example) -> dict[str, str]:
    """One GRPO dataset row for Tunix (part 06): the prompt string, the gold `answer`, and the
    `question` and `difficulty` the reward functions receive as keyword arguments."""
    return {"prompts": build_prompt(example.question), "answer": example.answer,
            "question": example.question, "difficulty": example.difficulty}


# --- the offline generator --------------------------------------------------------------------

_NAMES = [(name, "he" if i % 2 else "she") for i, name in enumerate(
    "Ava Liam Maya Noah Zara Omar Lena Kofi Priya Mateo Hana Ethan Sofia Yusuf Chloe Ravi Ingrid "
    "Diego Amara Felix Nadia Tomas Leila Jonah Mei Samir Greta Kenji Aisha Oscar".split())]
_ITEMS = ("apples marbles stickers pencils cookies stamps shells beads crayons cards erasers buttons "
          "oranges muffins balloons coins").split()
_GOODS = [("shirts", "pairs of socks", "hats"), ("notebooks", "pens", "folders"),
          ("books", "puzzles", "kites"), ("mugs", "plates", "bowls"), ("toy cars", "yo-yos", "balls")]
_THINGS = ["a new game", "lunch", "a gift", "books", "a concert ticket", "groceries", "a plant"]
_ANIMALS = [("cows", "chickens", "goats"), ("sheep", "ducks", "pigs"), ("horses", "geese", "rabbits")]


class _Steps(list):
    """A GSM8K-style solution, line by line, with ``<<expr=result>>`` annotations."""

    def calc(self, before: str, expr: str, value: int, after: str = "", money: bool = False) -> int:
        shown = f"{'$' if money else ''}<<{expr.replace(' ', '')}={value}>>{value}"
        self.append(f"{before}{expr} = {shown}{after}".strip())
        return value

    def solution(self, answer: int) -> str:
        return "\n".join([*self, f"#### {answer}"])


def _easy(rng: random.Random) -> tuple[str, str]:
    (name, pron), (other, _) = rng.sample(_NAMES, 2)
    item, s, kind = rng.choice(_ITEMS), _Steps(), rng.randrange(6)
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
    (name, pron), (other, _) = rng.sample(_NAMES, 2)
    s, kind = _Steps(), rng.randrange(5)
    if kind == 0:
        a, b, c = rng.randint(8, 25), rng.randint(2, 8), rng.randint(2, 8)
        d = rng.randint(5, a * (b + c) - 1)
        thing = rng.choice(_THINGS)
        q = (f"{name} earns ${a} an hour. {pron.capitalize()} works {b} hours on Monday and {c} hours "
             f"on Tuesday, then spends ${d} on {thing}. How much money does {pron} have left from "
             "those two days?")
        mon = s.calc(f"On Monday {name} earns ", f"{a} * {b}", a * b, ".", money=True)
        tue = s.calc(f"On Tuesday {pron} earns ", f"{a} * {c}", a * c, ".", money=True)
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
        a, b, d = rng.randint(5, 40), rng.randint(3, 12), rng.randint(2, 15)
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
        c += (a * b - c) % 2  # the rest must halve
        q = (f"A bakery bakes {a} trays of {item} with {b} {item} on each tray. It sells {c} in the "
             "morning and half of the rest in the afternoon. How many are left at the end of the day?")
        total = s.calc("The bakery bakes ", f"{a} * {b}", a * b, f" {item}.")
        rest = s.calc("After the morning, ", f"{total} - {c}", total - c, " are left.")
        half = s.calc("In the afternoon it sells ", f"{rest} / 2", rest // 2, ".")
        ans = s.calc("At the end of the day, ", f"{rest} - {half}", rest - half, f" {item} are left.")
    return q, s.solution(ans)


def _hard(rng: random.Random) -> tuple[str, str]:
    (name, pron), (other, _) = rng.sample(_NAMES, 2)
    s, kind = _Steps(), rng.randrange(4)
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
        e, f = rng.choice([10, 20, 25, 30]), rng.randint(2, 5)
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


_GENERATORS = {"easy": _easy, "medium": _medium, "hard": _hard}
_MIX = (0.36, 0.46, 0.18)  # easy, medium, hard: close to GSM8K's


def synthetic_problem(rng: random.Random, difficulty: str | None = None) -> Example:
    """One generated word problem with an exact answer and a GSM8K-style solution (part 03)."""
    if difficulty is None:
        difficulty = rng.choices(DIFFICULTIES, _MIX)[0]
    if difficulty not in _GENERATORS:
        raise ValueError(f"difficulty={difficulty!r}; choose one of {', '.join(DIFFICULTIES)}")
    question, solution = _GENERATORS[difficulty](rng)
    return Example(question, solution, gold_answer(solution), difficulty_of(solution), "synthetic")


def _question_key(question: str) -> str:
    return " ".join(question.lower().split())


def _synthetic(split: str) -> list[Example]:
    """GSM8K's number of generated problems, seeded per split; train never repeats a test question."""
    taken = {_question_key(e.question) for e in _load("test", "synthetic")} if split == "train" else set()
    rng = random.Random(f"course-utils/gsm-synthetic/{split}/v1")
    out: list[Example] = []
    while len(out) < SYNTHETIC_SIZES[split]:
        ex = synthetic_problem(rng)
        if _question_key(ex.question) not in taken:
            taken.add(_question_key(ex.question))
            out.append(ex)
    return out


# --- real GSM8K -------------------------------------------------------------------------------

def _examples(rows: Iterable[dict[str, Any]], source: str, where: str) -> list[Example]:
    out = []
    for i, row in enumerate(rows, 1):
        try:
            question, solution = row["question"], row["answer"]
            answer = gold_answer(solution)
        except (KeyError, TypeError):
            raise ValueError(f"{where}: row {i} lacks the GSM8K fields 'question' and 'answer'") from None
        except ValueError as err:
            raise ValueError(f"{where}: row {i}: {err}") from None
        out.append(Example(question.strip(), solution.strip(), answer, difficulty_of(solution), source))
    return out


def read_gsm8k_folder(folder: str | os.PathLike, split: str, source: str = "local") -> list[Example]:
    """One split from a folder of ``{split}.jsonl`` (GSM8K's files) or ``main_{split}.csv``
    (the Kaggle dataset's)."""
    jsonl, csv_path = Path(folder) / f"{split}.jsonl", Path(folder) / f"main_{split}.csv"
    if jsonl.is_file():
        rows = []
        for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            try:
                rows += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError as err:
                raise ValueError(f"{jsonl}: line {n} is not JSON ({err})") from None
        return _examples(rows, source, str(jsonl))
    if csv_path.is_file():
        with csv_path.open(encoding="utf-8", newline="") as fh:
            return _examples(list(csv.DictReader(fh)), source, str(csv_path))
    raise SourceUnavailable(f"{folder} has neither {split}.jsonl nor main_{split}.csv")


def _has_splits(folder: Path) -> bool:
    return all((folder / f"{s}.jsonl").is_file() or (folder / f"main_{s}.csv").is_file() for s in SPLITS)


def local_gsm8k_dir() -> Path:
    """The folder the ``"local"`` source reads: ``COURSE_GSM8K_DIR``, else ``../shared/data/gsm8k``
    beside the repository, else a GSM8K folder attached under ``/kaggle/input``."""
    if named := os.environ.get("COURSE_GSM8K_DIR", "").strip():
        if not _has_splits(Path(named).expanduser()):
            raise SourceUnavailable(
                f"COURSE_GSM8K_DIR={named} has no train.jsonl/test.jsonl (or main_train.csv/main_test.csv); "
                "point it at a folder holding GSM8K's files, or unset it")
        return Path(named).expanduser()
    inputs = [p for pattern in ("*", "*/*") for p in sorted(Path("/kaggle/input").glob(pattern))
              if "gsm" in str(p).lower() or "grade-school" in str(p)]
    found = next((p for p in [SHARED_GSM8K, *inputs] if p.is_dir() and _has_splits(p)), None)
    if found is None:
        raise SourceUnavailable(f"COURSE_GSM8K_DIR is not set and there is no GSM8K folder at {SHARED_GSM8K}")
    return found


_probe_cache: dict[str, bool] = {}


def host_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to `host` opens within `timeout` s, DNS included (in a daemon
    thread: a stuck lookup cannot hang the caller); cached. True with a proxy: the client decides."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    if host not in _probe_cache:
        opened: list[bool] = []

        def probe() -> None:
            with contextlib.suppress(Exception):  # DNS failure, refused, timed out: unreachable
                socket.create_connection((host, port), timeout=timeout).close()
                opened.append(True)

        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(timeout + 0.5)
        _probe_cache[host] = bool(opened)
    return _probe_cache[host]


def _from_huggingface(split: str) -> list[Example]:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("1", "true", "True") and not host_reachable("huggingface.co"):
        raise SourceUnavailable("huggingface.co cannot be reached (no network?)")
    try:
        import datasets
    except ImportError:
        raise SourceUnavailable("the `datasets` package is not installed (pip install datasets)") from None
    try:
        rows = datasets.load_dataset(*HF_DATASET, split=split)
    except Exception as err:  # offline cache miss, rate limit, ...
        raise SourceUnavailable(f"datasets.load_dataset{HF_DATASET} failed: {str(err)[:160]}") from None
    return _examples(rows, "huggingface", f"huggingface {HF_DATASET[0]}")


_cache: dict[tuple[str, str, str], tuple[Example, ...]] = {}


def _load(split: str, source: str) -> tuple[Example, ...]:
    """A whole split of a named source, cached for the process (per ``COURSE_GSM8K_DIR``)."""
    key = (source, split, os.environ.get("COURSE_GSM8K_DIR", ""))
    if key not in _cache:
        loaders = {"local": lambda: read_gsm8k_folder(local_gsm8k_dir(), split),
                   "huggingface": lambda: _from_huggingface(split), "synthetic": lambda: _synthetic(split)}
        _cache[key] = tuple(loaders[source]())
    return _cache[key]


def load_gsm8k(split: str, source: str = "auto", limit: int | None = None, verbose: bool = True) -> list[Example]:
    """GSM8K's `split` ("train" or "test") as `Example`s in file order, the first `limit` of them
    (part 03). A named source that cannot be used raises `SourceUnavailable` saying why; "auto"
    tries local, huggingface, synthetic and prints which it picked and why it skipped the others."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; choose 'train' or 'test' (load_splits carves validation from train)")
    if source not in SOURCES:
        raise ValueError(f"source={source!r}; choose one of {', '.join(SOURCES)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r}; use a positive integer, or None for the whole split")
    skipped = []
    for chosen in ("local", "huggingface", "synthetic") if source == "auto" else (source,):
        try:
            examples = list(_load(split, chosen)[:limit])
            break
        except SourceUnavailable as err:
            if source != "auto":
                raise
            skipped.append(f"{chosen}: {err}")
    if verbose and source == "auto":
        print(f"data: auto picked {chosen}" + (" — skipped " + "; ".join(skipped) if skipped else ""))
    if verbose:
        print(f"data: GSM8K {split}: {len(examples):,} examples from {chosen}")
    return examples


def load_splits(config: Any) -> dict[str, list[Example]]:
    """Disjoint train / validation / test examples for a `TrainingConfig` (part 03).

    test: the first ``config.eval_examples`` of GSM8K's test split; validation and train:
    seeded draws (``config.seed``) of ``val_examples`` and ``train_examples`` from its train
    split, without the train questions that are also in test. On a full-size profile "auto"
    finding no GSM8K raises `SourceUnavailable` rather than train on the generator.
    """
    train = load_gsm8k("train", config.data_source, verbose=config.data_source == "auto")
    source = train[0].source if train else config.data_source
    if source == "synthetic" and config.data_source == "auto" and config.profile in FULL_SIZE_PROFILES:
        raise SourceUnavailable(
            f"the {config.profile!r} profile trains on GSM8K, but data_source='auto' found no copy of it and "
            "would fall back to the toy problem generator (see the lines above for why each source failed). "
            "Attach the GSM8K dataset (Kaggle: Add Input), turn the notebook's internet on, or set "
            "COURSE_GSM8K_DIR to a folder of train.jsonl / test.jsonl; data_source='synthetic' uses the "
            "generator on purpose."
        )
    seen = {_question_key(e.question) for e in _load("test", source)}
    pool = []
    for ex in train:
        if _question_key(ex.question) not in seen:
            seen.add(_question_key(ex.question))
            pool.append(ex)
    if config.val_examples >= len(pool):
        raise ValueError(f"val_examples={config.val_examples} leaves no training data: the {source} train "
                         f"split has {len(pool)} usable examples; lower val_examples.")
    order = list(range(len(pool)))
    random.Random(config.seed).shuffle(order)
    rest = order[config.val_examples:]
    if config.train_examples is not None and config.train_examples > len(rest):
        print(f"data: only {len(rest)} training examples left after validation (asked for {config.train_examples})")
    splits = {"train": [pool[i] for i in rest[: config.train_examples]],
              "val": [pool[i] for i in order[: config.val_examples]],
              "test": list(_load("test", source)[: config.eval_examples])}
    print(f"data: splits from {source}: " + " · ".join(f"{k} {len(v):,}" for k, v in splits.items())
          + " (no overlap)")
    return splits

