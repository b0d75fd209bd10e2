"""The course's rewards: pure, tested, fast functions of a reply's text (part 03).

Each component maps any string (empty, 1 MB, unicode, broken tags) to a float in [0, 1] and
never raises:

- `format_reward`: one ``<reasoning>`` block, then one ``<answer>`` block, nothing but
  whitespace around them. Partial credit per piece of structure; multi-line reasoning is fine.
- `coherence_reward`: distinct substantive steps, arithmetic that is right and that leads to the
  answer, connectives. Repeated lines and bare step markers earn nothing.
- `correctness_reward`: 0 for a wrong answer; 0.7 + 0.3 × reasoning depth for a right one, so on
  this component a wrong answer never outscores a right one (in the composite it can: part 03).
- `efficiency_reward`: an appropriate length (weight 0 by default).
- `calibration_reward`: 1, unless the answer is wrong and worded over-confidently.

`composite_reward` weighs them (config weights 0.25 / 0.20 / 0.55 / 0 by default, or the
annealed ones of `annealed_weights`) and subtracts a verbosity penalty for over-long or looping
replies. `make_reward_fns` wraps it for Tunix's `GRPOLearner`.

`find_numbers`, `answers_match` and `check_arithmetic` are the course's one number reader, answer
checker and arithmetic checker: evaluation (part 07) reads replies with them, so an answer or a
calculation is right or wrong to the same rule in training and in evaluation.

The three bugs that travel between public GRPO notebooks are ruled out by construction (and by
regression tests): no regex runs with MULTILINE anchors, so chatter before or after the tags
costs format credit; the answer is the *last* number of the *last* ``<answer>`` block, with
sign, thousands separators and decimals; no regex relies on ``.`` so multi-line reasoning
counts. Every regex is linear-time; no model text is ever passed to ``eval``, ``exec`` or
``sympify`` (only short non-numeric answers reach math-verify's own parser).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import operator
import re
import threading
from fractions import Fraction
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from course_utils.tokenizer import END_MARKERS
from course_utils.data import (
    DIFFICULTIES,
    NUMBER_PATTERN,
    canonical_number,
    format_number,
    difficulty_of,
    gold_answer,
    parse_number,
    strip_answer_markup,
)

COMPONENTS = ("format", "coherence", "correctness", "efficiency", "calibration")
TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
# Steps a trace should show per difficulty (difficulty-aware trace scoring); None = unknown.
EXPECTED_STEPS = {"easy": 2, "medium": 3, "hard": 5, None: 3}
MAX_ANSWER_NUMBERS = 3  # more numbers than this in <answer> is answer stuffing: no answer
MAX_TRACE_CHARS = 20_000  # coherence reads this much reasoning; the verbosity penalty sees all
IDEAL_WORDS = (20, 250)  # efficiency: full marks inside, falling to 0 at 4 × the upper end
VERBOSE_WORDS = (400, 1200)  # verbosity: penalty starts at 400 words, is full at 1,200
CORRECT_BASE = 0.7  # correctness: a right answer earns 0.7, plus 0.3 × reasoning depth

# --------------------------------------------------------------------------------------------
# Reading a reply (linear-time regexes only; nothing here can backtrack catastrophically)
# --------------------------------------------------------------------------------------------

_TRACE_NUMBER = re.compile(rf"(?<![\w.])-?{NUMBER_PATTERN}")
_ANSWER_NUMBER = re.compile(_TRACE_NUMBER.pattern + r"(?:\s?/\s?\d+)?")  # 3/4 too
_BIG_EXPONENT = re.compile(r"\^\s*\{?\s*\(?\s*-?\d{3}")
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*\{\s*(\d[\d,.]*)\s*\}\s*\{\s*(\d[\d,.]*)\s*\}")
_LHS_TOKEN = re.compile(r"(?:\d[\d,]*(?:\.\d+)?|\.\d+)%?|[-+*/×÷−()]|[A-Za-z]+")
# The written result after "=": a number (decimal, fraction, percent), not glued to a single
# letter ("4S" is algebra) and not followed by more arithmetic ("= 16 + 20 + 48 = 84").
_RHS = re.compile(
    r"[ \t]*\$?[ \t]*(-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+(?![\d.]))?%?)"
    r"(?![A-Za-z](?![A-Za-z]))(?!\d)(?![ \t]*[-+*/×÷x][ \t]*\$?[\d(.])"
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_MARKER = re.compile(
    r"(?:(?:step|part)\s*\d{1,3}\s*[:.)\-]*|\d{1,3}\s*[.):]|[-*•>#]+|\*\*)\s*", re.IGNORECASE
)
_CONNECTIVES = re.compile(
    r"\b(so|therefore|thus|then|because|hence|since|which means|this means|that means|in total|"
    r"altogether|first|next|finally|now|after that|subtract|add|multiply|divide)\b",
    re.IGNORECASE,
)
_OVERCONFIDENT = re.compile(
    r"\b(definitely|certainly|absolutely|undoubtedly|obviously|guaranteed|without (?:a|any) doubt|"
    r"no doubt|for sure|100 ?% (?:sure|certain|correct)|i am (?:sure|certain|confident)|"
    r"i'm (?:sure|certain|confident)|trust me)\b",
    re.IGNORECASE,
)


def _text(response: Any) -> str:
    """Any model output as text: bytes are decoded, None is empty, Gemma's end markers are cut."""
    if isinstance(response, str):
        s = response
    elif isinstance(response, (bytes, bytearray)):
        s = bytes(response).decode("utf-8", "replace")
    elif response is None:
        s = ""
    else:
        s = str(response)
    s = s.rstrip()
    while s.endswith(END_MARKERS):
        s = s[: s.rfind("<")].rstrip()
    return s


class _Reply:
    """Everything the components need from one reply, computed once (part 03 internals)."""

    __slots__ = ("text", "counts", "format_score", "reasoning", "answer_block", "_answer", "_trace",
                 "_words", "_lines", "question")

    def __init__(self, response: Any, question: str | None = None) -> None:
        self.question = question if isinstance(question, str) and question.strip() else None
        s = self.text = _text(response)
        counts = self.counts = tuple(s.count(t) for t in TAGS)
        score = 0.1 * sum(c == 1 for c in counts)
        if counts == (1, 1, 1, 1):
            r0, r1, a0, a1 = (s.find(t) for t in TAGS)
            if r0 < r1 < a0 < a1:
                score += 0.2
                score += 0.1 * (not s[:r0].strip())
                score += 0.1 * (not s[r1 + 12:a0].strip())
                score += 0.1 * (not s[a1 + 9:].strip())
                score += 0.1 * bool(s[r0 + 11:r1].strip() and s[a0 + 8:a1].strip())
        self.format_score = min(1.0, round(score, 10))
        # The reasoning: the first <reasoning> block (to </reasoning>, <answer> or the end), else
        # whatever precedes the first <answer>, else the whole reply.
        r0 = s.find("<reasoning>")
        if r0 >= 0:
            start = r0 + 11
            end = s.find("</reasoning>", start)
            if end < 0:
                end = s.find("<answer>", start)
            self.reasoning = s[start: end if end >= 0 else len(s)]
        else:
            a0 = s.find("<answer>")
            self.reasoning = s[:a0] if a0 >= 0 else s
        # The answer: the content of the last complete <answer>…</answer> block.
        a1 = s.rfind("</answer>")
        a0 = s.rfind("<answer>", 0, a1) if a1 >= 0 else -1
        self.answer_block = s[a0 + 8:a1] if a0 >= 0 else None
        self._answer = self._trace = self._words = self._lines = None

    @property
    def answer(self) -> str | None:
        if self._answer is None and self.answer_block is not None:
            self._answer = (normalize_answer(self.answer_block),)
        return None if self._answer is None else self._answer[0]

    @property
    def words(self) -> int:
        if self._words is None:
            s = self.text
            self._words = len(s.split()) if len(s) < 200_000 else int(len(s) / 6)
        return self._words

    @property
    def trace(self) -> "_Trace":
        if self._trace is None:
            self._trace = _Trace(self.reasoning[:MAX_TRACE_CHARS], self.answer, self.question)
        return self._trace

    @property
    def repeated_share(self) -> float:
        """Share of the reply's non-empty lines that repeat an earlier line (0 for honest text)."""
        if self._lines is None:
            lines = [l.strip() for l in self.text.split("\n", 5000)[:5000]]
            lines = [l for l in lines if l]
            self._lines = 0.0 if len(lines) < 4 else 1.0 - len(set(lines)) / len(lines)
        return self._lines


class _Trace:
    """Step, equation and connective statistics of a reasoning text.

    units: non-empty lines (long lines split into sentences); quality: the share of units that
    are distinct and contentful (not a bare marker, not a repeat, not made-up arithmetic);
    steps: those contentful units that work with a number, are not made up (a unit whose only
    arithmetic is true but ungrounded is not a step) and do not merely restate a sentence of
    the question;
    connectives: distinct ones within steps;
    valid / invalid: counted equations; used: valid equations whose result reappears in a later
    unit or is the final answer; leads: the reasoning reaches the final answer.
    """

    __slots__ = ("units", "steps", "quality", "valid", "invalid", "used", "connectives", "leads", "fabricated")

    def __init__(self, reasoning: str, answer: str | None, question: str | None) -> None:
        if "\\" in reasoning:  # LaTeX arithmetic: \frac{48}{2} -> (48/2), \times -> ×
            reasoning = _LATEX_FRACTION.sub(r"(\1/\2)", reasoning)
            for command, symbol in (("\\times", "×"), ("\\cdot", "×"), ("\\div", "÷")):
                reasoning = reasoning.replace(command, symbol)
        units: list[str] = []
        for line in reasoning.split("\n"):
            line = line.strip()
            if line:
                units.extend(_SENTENCE_END.split(line) if len(line) > 80 else (line,))
        keys: set[str] = set()
        contents: list[str] = []
        for unit in units:
            m = _MARKER.match(unit)
            content = unit[m.end():] if m else unit
            if (content.count(" ") >= 2 or "=" in content) and any(ch.isalnum() for ch in content):
                key = " ".join(content.lower().split())
                if key not in keys:
                    keys.add(key)
                    contents.append(content)
        self.units = len(units)
        self.quality = len(contents) / len(units) if units else 0.0
        grounding = _grounding(question) if question else None
        known = set(grounding) if grounding is not None else None
        question_key = " ".join(question.lower().split()) if question else ""
        answer_key = answer if answer and answer[-1].isdigit() else None
        equations: list[tuple[int, str]] = []
        last_unit_of: dict[str, int] = {}
        budget = [200]  # at most 200 '=' signs are examined per reply
        steps = invalid = fabricated = 0
        tainted: set[str] = set()  # numbers of made-up equations: never known
        numbers: set[str] = set()
        with_numbers: list[str] = []
        for i, content in enumerate(contents):
            results, bad, made_up = _unit_equations(content, known, budget, tainted)
            tainted |= made_up
            invalid += bad
            equations += [(i, rhs) for rhs in results]
            numbers = set(find_numbers(content))
            if known is not None:  # numbers stated in a step may be used later, unless made up
                known.update(n.lstrip("-") for n in numbers if n.lstrip("-") not in tainted)
            restated = len(content) >= 20 and " ".join(content.lower().split()) in question_key
            fabricated += bool(made_up) and not results
            if numbers and (results or not made_up) and not restated:  # a step works with a quantity
                steps += 1
                with_numbers.append(content)
            for n in numbers:
                last_unit_of[n] = i
        self.steps, self.valid, self.invalid, self.fabricated = steps, len(equations), invalid, fabricated
        self.quality = (len(contents) - fabricated) / len(units) if units else 0.0
        self.used = sum(1 for i, rhs in equations if rhs == answer_key or last_unit_of.get(rhs, -1) > i)
        self.connectives = len({m.lower() for m in _CONNECTIVES.findall("\n".join(with_numbers))})
        self.leads = answer_key is not None and (
            any(rhs == answer_key for _, rhs in equations) or answer_key in numbers)


def _num_key(token: str) -> str:
    """A number token as a comparable key: ``"1,080.50"`` → ``"1080.5"``, ``"24.0"`` → ``"24"``."""
    token = token.replace(",", "")
    if "." in token:
        token = token.rstrip("0").rstrip(".")
        if token.startswith((".", "-.")):
            token = token.replace(".", "0.", 1)
    return "0" if token in ("-0", "", "0.") else token


# Numbers a solution may use without taking them from the question: small counts, "twice",
# "half", percent, minutes, hours, days, weeks, months, dozens.
_CONSTANTS = frozenset([str(i) for i in range(13)] + ["0.5", "0.25", "0.75", "1.5", "0.1", "0.01", "15", "16", "20",
                       "24", "30", "36", "52", "60", "100", "360", "365", "1000", "1760", "2000", "3600", "5280"])
_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "twice": 2, "double": 2, "triple": 3, "half": 2, "dozen": 12,
    "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000, "million": 1000000,
}
_WORD = re.compile(r"[a-z]+")


@functools.lru_cache(maxsize=4096)
def _grounding(question: str) -> frozenset[str] | None:
    values = [Fraction(_num_key(t).lstrip("-")) for t in _TRACE_NUMBER.findall(question[:5000])]
    values += [Fraction(_NUMBER_WORDS[w]) for w in _WORD.findall(question[:5000].lower()) if w in _NUMBER_WORDS]
    if not values:
        return None  # a question without numbers: there is nothing to ground equations in
    found: set[str] = set()
    for v in values:
        found.add(format_number(v))
        found.add(format_number(v / 100))
    return frozenset(found)


def question_numbers(question: str) -> frozenset[str]:
    """The numbers an honest solution of `question` may start from (part 03): those written in
    it (digits or words), each also divided by 100 (percentages), plus common constants."""
    return (_grounding(question) or frozenset()) | _CONSTANTS


def _unit_equations(text: str, known: set[str] | None, budget: list[int],
                    tainted: frozenset[str] | set[str] = frozenset()) -> tuple[list[str], int, set[str]]:
    """The ``a op b … = c`` equations of one step: (results of the counted ones, how many are
    wrong, the numbers of the made-up ones).

    Each ``=`` is examined once, with a left side of at most 80 characters, so this is linear.
    With `known` (the question's numbers, growing with each counted result and each number
    stated in an earlier step), a right equation counts when its operands are known or common
    constants (`_CONSTANTS`: small counts, 60, 100, 5280, …), allowing one other number (a fact
    such as 26 letters); a true equation on two numbers from nowhere is *made up*, and so is
    anything built on its numbers (`tainted`).
    """
    results: list[str] = []
    made_up: set[str] = set()
    invalid = 0
    for lhs, rhs, ok in _equations(text, budget):
        if not ok:
            invalid += 1
            continue
        result = _num_key(rhs.rstrip("%"))
        if known is None:
            results.append(result)
            continue
        operands = [_num_key(t.rstrip("%")).lstrip("-") for t in lhs if t[-1].isdigit() or t[-1] == "%"]
        unknown = [o for o in operands if o not in known and o not in _CONSTANTS]
        # one unknown operand beside known ones is a fact the writer knows (26 letters, 50
        # states); two or more, or one from a made-up equation, is made up
        if not unknown or (len(unknown) == 1 and len(operands) > 1 and unknown[0] not in tainted
                           and unknown[0] not in made_up):
            results.append(result)
            known.add(result.lstrip("-"))
        else:
            made_up.update(operands + [result.lstrip("-")])
    return results, invalid, made_up


def _equations(text: str, budget: list[int] | None = None) -> Iterator[tuple[list[str], str, bool]]:
    """Each ``a op b … = c`` of `text` as (left-side tokens, written result, holds?).

    Each ``=`` is examined once, with a left side of at most 80 characters (linear time); with
    `budget`, at most ``budget[0]`` of them (the count is decremented)."""
    pos, prev = text.find("="), 0
    while pos >= 0 and (budget is None or budget[0] > 0):
        if budget is not None:
            budget[0] -= 1
        r = _RHS.match(text, pos + 1)
        lhs = _left_side(text[max(prev, pos - 80):pos]) if r else None
        if lhs:
            value = _evaluate(lhs)
            if value is not None:
                yield lhs, r.group(1), _close(value, r.group(1))
            prev = r.end()
        pos = text.find("=", pos + 1)


@dataclasses.dataclass(frozen=True)
class Calculation:
    """One written calculation ``left = result`` and whether it holds (parts 03 and 07)."""

    text: str
    ok: bool


def check_arithmetic(text: Any) -> list[Calculation]:
    """Every written calculation ``a op b … = c`` in `text`, with its truth (parts 03 and 07).

    The one arithmetic checker of the course: the coherence reward counts these, evaluation's
    ``wrong_arithmetic`` category reads them. Precedence and parentheses are honoured, unit
    words are skipped (``16 feet * 12 feet = 192``), ``15%`` is 0.15, algebra (``2S + 4S``) and
    division by zero are not judged. A written decimal must be the value rounded to the
    decimals shown: ``10/3 = 3.33`` holds, ``2/3 = 0.66`` does not (0.67). Nothing is passed to
    ``eval``."""
    if not isinstance(text, str):
        return []
    return [Calculation(f"{' '.join(lhs)} = {rhs}", ok) for lhs, rhs, ok in _equations(text)]


def find_numbers(text: Any) -> list[str]:
    """Every number written in `text`, normalised (``"$1,080.50"`` → ``"1080.5"``), in order: the
    numbers the coherence reward reads in a trace, and evaluation's lenient answer (the last)."""
    return [_num_key(t) for t in _TRACE_NUMBER.findall(text)] if isinstance(text, str) else []


def _close(value: float, text: str) -> bool:
    """Whether `value` equals the written result `text` (``"24"``, ``"0.33"``, ``"3/4"``, ``"60%"``),
    allowing the rounding the text's decimals imply; ``60%`` matches 60 and 0.6."""
    percent = text.endswith("%")
    text = text.rstrip("%").replace(",", "")
    if "/" in text:
        num, den = text.split("/")
        if not float(den):
            return False
        rhs, tolerance = float(num) / float(den), 1e-9 * max(1.0, abs(float(num) / float(den)))
    else:
        rhs = float(text)
        decimals = len(text.split(".", 1)[1]) if "." in text else 0
        tolerance = 0.5 * 10.0**-decimals + 1e-9 * abs(rhs) if decimals else 1e-6 * max(1.0, abs(rhs))
    if abs(value - rhs) <= tolerance:
        return True
    return percent and abs(value * 100 - rhs) <= tolerance


_OPERATORS = {"×": "*", "÷": "/", "−": "-"}
_OPERATOR_TOKENS = ("+", "-", "*", "/", "×", "÷", "−")


def _next_char(text: str, i: int) -> str:
    while i < len(text) and text[i] in " \t$":
        i += 1
    return text[i] if i < len(text) else "="


def _left_side(window: str) -> list[str] | None:
    """The arithmetic just before an ``=``, as tokens: unit words dropped (``16 feet * 12 feet``),
    ``x`` / ``times`` read as ×, an operator followed by a word dropped (``$6/day`` is a rate,
    ``non-valuable`` a hyphen), ``15%`` kept as 0.15. Only the last clause counts (after ``. ``,
    ``, ``, ``:``, ``;``, a newline or another ``=``), and only its tail where numbers and
    operators alternate. None when that is no expression, or is algebra (``2S + 4S``, ``M + 4``)."""
    cut = max(window.rfind(". "), window.rfind(", "), window.rfind(":"), window.rfind(";"),
              window.rfind("\n"), window.rfind("="))
    tokens: list[str] = []
    end = -1
    for m in _LHS_TOKEN.finditer(window, cut + 1):
        t = m.group(0)
        if t[0].isalpha():
            if len(t) == 1 and t != "x" and (m.start() == end or _next_char(window, m.end()) in "+-*/=)"):
                return None  # "2S", "M + 4": algebra with a variable, not arithmetic
            if t.lower() in ("x", "times"):
                tokens.append("*")
            elif tokens and tokens[-1] in _OPERATOR_TOKENS:
                tokens.pop()
            continue
        if tokens and (t == "(" and tokens[-1][-1] in "0123456789%)" or t[-1].isdigit() and tokens[-1] == ")"):
            tokens.append("*")  # 220(.40) and (1/2)x: implicit multiplication
        tokens.append(t)
        end = m.end()
    for k in range(len(tokens) - 2, -1, -1):  # two numbers in a row: keep what follows
        if tokens[k][-1].isdigit() and tokens[k + 1][-1].isdigit():
            tokens = tokens[k + 1:]
            break
    while tokens and tokens[0] in ("+", "*", "/", "×", "÷", ")"):
        tokens = tokens[1:]
    if not 3 <= len(tokens) <= 41 or not any(t in _OPERATOR_TOKENS for t in tokens[1:]):
        return None
    return tokens


_AST_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(tokens: list[str]) -> float | None:
    """Value of a small arithmetic expression (numbers, + − × ÷, parentheses), else None.

    `_left_side`'s tokens, each number as a name (``15%`` is 0.15), are parsed by Python's own
    `ast` parser and evaluated node by node: only numbers, unary minus and the four operations
    are allowed; nothing is ever passed to ``eval``.
    """
    numbers: list[float] = []

    def name(t: str) -> str:
        if not (t[-1].isdigit() or t.endswith("%")):
            return _OPERATORS.get(t, t)
        numbers.append(float(t[:-1].replace(",", "")) / 100 if t.endswith("%") else float(t.replace(",", "")))
        return f"n{len(numbers) - 1}"

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Name):
            return numbers[int(node.id[1:])]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPERATORS:
            return _AST_OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    try:
        result = value(ast.parse(" ".join(map(name, tokens)), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return result if math.isfinite(result) else None


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------


def normalize_answer(content: str) -> str:
    """The normalised text of an ``<answer>`` block's content (part 03).

    One number → its canonical form (``"$1,234.50"`` → ``"1234.5"``, ``"\\boxed{18}"`` → ``"18"``,
    ``"50%"`` → ``"50"``, ``"3/4"`` → ``"0.75"``). Text with up to `MAX_ANSWER_NUMBERS` numbers →
    the *last* one (``"3 apples, 12 in total"`` → ``"12"``; ``"x = -5"`` → ``"-5"``). Anything
    else (no number, a list of numbers, or a math expression such as ``\\sqrt{324}`` that
    `is_correct` hands to math-verify) → the text itself, whitespace collapsed.
    """
    content = content.strip()
    if len(content) > 500:
        return " ".join(content.split())
    exact = canonical_number(content)
    if exact is not None:
        return exact
    text = strip_answer_markup(content)
    if any(mark in text for mark in ("\\", "^", "{", "sqrt")):  # a math expression: math-verify's job
        return " ".join(text.split())
    numbers = _ANSWER_NUMBER.findall(text)
    if 1 <= len(numbers) <= MAX_ANSWER_NUMBERS:
        last = canonical_number(numbers[-1].replace(" ", ""))
        if last is not None:
            return last
    return " ".join(text.split())


def extract_answer(response: Any) -> str | None:
    """The normalised content of the last ``<answer>…</answer>`` block; None when there is none.

    >>> extract_answer("<reasoning>…</reasoning><answer>$1,234</answer>")
    '1234'
    """
    return _Reply(response).answer


@functools.lru_cache(maxsize=16384)
def _gold(ground_truth: str) -> tuple[str, Fraction | None]:
    text = ground_truth.strip()
    if "####" in text:
        gold = gold_answer(text)
    else:
        gold = canonical_number(text) or " ".join(strip_answer_markup(text).split())
    if not gold:
        raise ValueError("ground_truth is empty; pass the gold answer or a GSM8K solution ending in '#### N'")
    return gold, parse_number(gold)


def _gold_text(ground_truth: Any) -> str:
    if isinstance(ground_truth, (bytes, bytearray)):
        ground_truth = bytes(ground_truth).decode("utf-8", "replace")
    if isinstance(ground_truth, bool) or ground_truth is None:
        raise ValueError(f"ground_truth={ground_truth!r}: pass the gold answer (e.g. '72') or a GSM8K solution")
    if isinstance(ground_truth, float) and ground_truth.is_integer():
        ground_truth = int(ground_truth)
    return str(ground_truth)


def gold_value(ground_truth: Any) -> str:
    """The normalised gold answer: from a bare answer, a number, or a solution ending ``#### N``."""
    return _gold(_gold_text(ground_truth))[0]


def answers_match(pred: str | None, ground_truth: Any) -> bool:
    """True when the answer `pred` (normalised text) equals the gold (part 03): numbers exactly as
    fractions, other short answers through math-verify. The one answer checker of the course."""
    if pred is None:
        return False
    gold, gold_num = _gold(_gold_text(ground_truth))
    pred_num = parse_number(pred)
    if pred_num is not None and gold_num is not None:
        return pred_num == gold_num  # the fast, exact path: GSM8K answers are numbers
    if pred == gold:
        return True
    if not any(mark in pred for mark in ("\\", "^", "{", "sqrt", "(")):
        return False  # words, or a list of numbers: nothing for math-verify to simplify
    return _math_verify(pred, gold)


@functools.lru_cache(maxsize=4096)
def _math_verify(pred: str, gold: str) -> bool:
    """math-verify's equivalence for short non-numeric answers (``\\sqrt{4}`` vs ``2``)."""
    if len(pred) > 100 or len(gold) > 100 or not any(ch.isdigit() or ch == "\\" for ch in pred):
        return False
    if pred.count("^") > 1 or "!" in pred or _BIG_EXPONENT.search(pred):
        return False  # power towers and factorials could keep sympy busy for minutes
    try:
        from math_verify import parse, verify
        from math_verify.errors import TimeoutException
    except ImportError:
        return False
    main = threading.current_thread() is threading.main_thread()
    limit = 2 if main else None  # math-verify's timeout uses SIGALRM, main thread only
    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=limit)
        pred_parsed = parse(f"${pred}$", parsing_timeout=limit)
        return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=limit))
    except (Exception, TimeoutException):
        return False


def is_correct(response: Any, ground_truth: Any) -> bool:
    """True when the reply's extracted answer equals the gold mathematically (part 03).

    `ground_truth` may be a bare answer (``"72"``, ``72``) or a whole GSM8K solution ending in
    ``#### 72``. Numbers compare exactly as fractions (``"72.0"`` = ``"72"``, ``"0.5"`` = ``"1/2"``);
    other short answers go through math-verify.
    """
    return answers_match(_Reply(response).answer, ground_truth)


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


def _difficulty(difficulty: str | None, ground_truth: Any = None) -> str | None:
    if difficulty in DIFFICULTIES:
        return difficulty
    if isinstance(ground_truth, str) and "####" in ground_truth:
        return difficulty_of(ground_truth)
    return None


def _format(reply: _Reply) -> float:
    return reply.format_score


def _coherence(reply: _Reply, difficulty: str | None) -> float:
    t = reply.trace
    if not t.units:
        return 0.0
    expected = EXPECTED_STEPS[difficulty]
    s_steps = min(1.0, t.steps / expected)
    s_eq = 0.0
    if t.valid:
        s_eq = min(1.0, (t.used + 0.5 * (t.valid - t.used)) / expected) * t.valid / (t.valid + t.invalid)
    s_conn = min(1.0, t.connectives / 2)
    score = t.quality * (0.35 * s_steps + 0.35 * s_eq + 0.15 * s_conn + 0.15 * t.leads)
    return min(1.0, max(0.0, score))


def _correctness(reply: _Reply, correct: bool, difficulty: str | None) -> float:
    # Reasoning depth = the coherence score: steps that lead, with grounded arithmetic.
    return CORRECT_BASE + (1.0 - CORRECT_BASE) * _coherence(reply, difficulty) if correct else 0.0


def _efficiency(reply: _Reply) -> float:
    words, (low, high) = reply.words, IDEAL_WORDS
    if words < low:
        return words / low
    if words <= high:
        return 1.0
    return max(0.0, 1.0 - (words - high) / (3 * high))


def _overconfidence(reply: _Reply) -> float:
    s = reply.text
    view = s if len(s) <= 25_000 else s[:20_000] + "\n" + s[-5_000:]
    hits = 0
    for _ in _OVERCONFIDENT.finditer(view):
        hits += 1
        if hits == 2:
            break
    return hits / 2


def _calibration(reply: _Reply, correct: bool) -> float:
    return 1.0 if correct else 1.0 - _overconfidence(reply)


def _verbosity(reply: _Reply) -> float:
    low, high = VERBOSE_WORDS
    length = min(1.0, max(0.0, (reply.words - low) / (high - low)))
    looping = min(1.0, max(0.0, (reply.repeated_share - 0.2) / 0.6))
    return max(length, looping)


def format_reward(response: Any) -> float:
    """Structure score in [0, 1] (part 03): 1.0 exactly for ``<reasoning>…</reasoning>`` then
    ``<answer>…</answer>`` with nothing but whitespace around, both non-empty.

    Partial credit: 0.1 per tag present exactly once, 0.2 for the right order, 0.1 each for
    nothing before, between and after the blocks, 0.1 for both blocks non-empty.
    """
    return _format(_Reply(response))


def coherence_reward(response: Any, difficulty: str | None = None, question: str | None = None) -> float:
    """Reasoning quality in [0, 1] (part 03), read from the ``<reasoning>`` block.

    quality × (0.35 steps + 0.35 equations + 0.15 connectives + 0.15 reaches the answer), where
    steps = distinct substantive steps / steps expected for the difficulty (easy 2, medium 3,
    hard 5), equations = correct ``a op b = c`` that are used later, connectives = distinct
    words like "so", "then", "therefore" (2 suffice), and quality = the share of lines that
    are distinct and substantive: repeating lines or writing bare "Step 3:" markers pays nothing.
    With `question`, equations count only when their numbers come from the question (or from
    earlier counted results, or common constants): made-up true sums pay nothing.
    """
    reply = _Reply(response, question)
    return _coherence(reply, difficulty if difficulty in DIFFICULTIES else None)


def correctness_reward(response: Any, ground_truth: Any, difficulty: str | None = None,
                       question: str | None = None) -> float:
    """0 for a wrong or missing answer; 0.7 + 0.3 × reasoning depth for a right one (part 03).

    The reasoning depth is `coherence_reward` of the same reply (so with the same `difficulty`
    and `question`): a right answer reached by grounded steps earns up to 1.0, a bare right
    answer 0.7. A wrong answer (0) can never outscore a right one (≥ 0.7).
    """
    reply = _Reply(response, question)
    correct = answers_match(reply.answer, ground_truth)
    return _correctness(reply, correct, _difficulty(difficulty, ground_truth))


def efficiency_reward(response: Any) -> float:
    """1 for 20–250 words, less when shorter, falling to 0 at 1,000 words (part 03)."""
    return _efficiency(_Reply(response))


def calibration_reward(response: Any, ground_truth: Any) -> float:
    """1, except for a wrong answer worded over-confidently ("definitely", "I am sure", "100%
    certain"…): 0.5 for one such phrase, 0 for two or more (part 03)."""
    reply = _Reply(response)
    return _calibration(reply, answers_match(reply.answer, ground_truth))


def verbosity(response: Any) -> float:
    """How far a reply runs on, in [0, 1]: its length past 400 words (full at 1,200) or its share
    of repeated lines past 20 %, whichever is larger. `composite_reward` subtracts
    ``config.verbosity_penalty`` × this."""
    return _verbosity(_Reply(response))


# --------------------------------------------------------------------------------------------
# Weights and the composite
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _default_config() -> Any:
    from course_utils.config import TrainingConfig

    return TrainingConfig()


def static_weights(config: Any = None) -> dict[str, float]:
    """The config's four weights (format, coherence, correctness, efficiency) and calibration 0."""
    config = config or _default_config()
    return {**config.reward_weights, "calibration": 0.0}


def annealed_weights(config: Any, step: float) -> dict[str, float]:
    """The reward weights at training `step` when annealing (part 03). They sum to 1.

    `step` is the 0-based optimiser step whose rollouts are being scored: 0 … max_steps − 1.
    With t = step / (max_steps − 1) (clamped to [0, 1]; t = 1 when max_steps is 1), linear in t,
    so the first step pays the start weights and the last step exactly the end weights
    (`final_weights`):

    - trace = format + coherence: ``anneal_trace_weight_start → _end`` (0.45 → 0.25), split
      between format and coherence in the config's static ratio (0.25 : 0.20);
    - correctness: ``anneal_correct_weight_start → _end`` (0.40 → 0.60);
    - efficiency: the config's static weight (0);
    - calibration: the rest, 1 − trace − correctness − efficiency (0.15 throughout).

    Relation to the static weights: at step 0 the trace weight equals the static one (0.45),
    and the static correctness weight 0.55 is split into correctness 0.40 + calibration 0.15 —
    not the same money: calibration pays its 0.15 to every reply except a wrong one stated
    over-confidently, so wrong answers gain 0.15 and the right−wrong gap narrows. Over training
    0.20 moves from the trace to correctness: early on the model is paid to write the format,
    later to be right.
    """
    config = config or _default_config()
    step = float(step)
    span = config.max_steps - 1
    if span <= 0:
        t = 1.0  # a one-step run: its only step is the last
    else:
        t = 0.0 if not math.isfinite(step) else min(1.0, max(0.0, step / span))
    trace = config.anneal_trace_weight_start + (config.anneal_trace_weight_end - config.anneal_trace_weight_start) * t
    correct = config.anneal_correct_weight_start + (
        config.anneal_correct_weight_end - config.anneal_correct_weight_start) * t
    f, c = config.format_reward_weight, config.coherence_reward_weight
    share = f / (f + c) if f + c > 0 else 0.5
    efficiency = config.efficiency_reward_weight
    return {
        "format": trace * share,
        "coherence": trace * (1.0 - share),
        "correctness": correct,
        "efficiency": efficiency,
        "calibration": max(0.0, 1.0 - trace - correct - efficiency),
    }


def final_weights(config: Any = None) -> dict[str, float]:
    """The weights the last GRPO step pays (part 03): the annealing's end weights when the config
    anneals, else the static ones. Evaluation (part 07) scores replies with these, so its
    composite reward is what training paid at the end."""
    config = config or _default_config()
    return reward_weights(config, config.max_steps - 1)


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """`weights` completed with zeros for the missing components; ValueError if a name is
    unknown, a weight is negative or not finite, or they do not sum to 1."""
    unknown = sorted(set(weights) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown reward component(s) {unknown}; the components are {', '.join(COMPONENTS)}")
    out = {}
    for name in COMPONENTS:
        w = weights.get(name, 0.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weight {name}={w!r} must be a finite number >= 0")
        out[name] = float(w)
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"reward weights must sum to 1 but sum to {total:.6g}: {out}")
    return out


def reward_weights(config: Any = None, step: float | None = None) -> dict[str, float]:
    """The weights `composite_reward` uses: annealed at `step` when the config anneals and a
    step is given, else the static config weights."""
    config = config or _default_config()
    if config.anneal_reward_weights and step is not None:
        return annealed_weights(config, step)
    return static_weights(config)


@dataclasses.dataclass(frozen=True)
class RewardBreakdown:
    """A composite score and where it came from (part 03).

    `total` = Σ weights[k] × components[k] − penalties["verbosity"], clipped to [0, 1].
    """

    total: float
    components: dict[str, float]
    weights: dict[str, float]
    penalties: dict[str, float]
    correct: bool
    answer: str | None
    difficulty: str | None

    @property
    def contributions(self) -> dict[str, float]:
        """weight × score per component."""
        return {k: self.weights[k] * self.components[k] for k in COMPONENTS}

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _score(reply: _Reply, ground_truth: Any, weights: dict[str, float], penalty: float,
           difficulty: str | None) -> RewardBreakdown:
    correct = answers_match(reply.answer, ground_truth)
    components = {
        "format": _format(reply),
        "coherence": _coherence(reply, difficulty),
        "correctness": _correctness(reply, correct, difficulty),
        "efficiency": _efficiency(reply),
        "calibration": _calibration(reply, correct),
    }
    weighted = sum(weights[k] * components[k] for k in COMPONENTS)
    pen = penalty * _verbosity(reply) if penalty else 0.0
    total = min(1.0, max(0.0, weighted - pen))
    return RewardBreakdown(total, components, weights, {"verbosity": pen}, correct, reply.answer, difficulty)


def composite_reward(
    response: Any,
    ground_truth: Any,
    weights: Mapping[str, float] | None = None,
    step: float | None = None,
    config: Any = None,
    difficulty: str | None = None,
    question: str | None = None,
) -> RewardBreakdown:
    """The weighted reward of one reply, with its breakdown (part 03).

    Weights: `weights` when given (any of `COMPONENTS`, summing to 1); else the config's —
    annealed at `step` when ``config.anneal_reward_weights`` and a step is given, else static.
    `config` defaults to `TrainingConfig()`. `difficulty` (easy | medium | hard) scales the
    steps a trace should show; when None it is read from `ground_truth` if that is a full
    solution. `question` (or the prompt: only its numbers are read) grounds the equations of
    the coherence score. The verbosity penalty is ``config.verbosity_penalty`` × `verbosity`.
    """
    config = config or _default_config()
    chosen = check_weights(weights) if weights is not None else reward_weights(config, step)
    return _score(_Reply(response, question), ground_truth, chosen, config.verbosity_penalty,
                  _difficulty(difficulty, ground_truth))


def score_batch(
    completions: Sequence[Any],
    answers: Sequence[Any],
    config: Any = None,
    step: float | None = None,
    difficulties: Sequence[str | None] | None = None,
    weights: Mapping[str, float] | None = None,
    questions: Sequence[str | None] | None = None,
) -> list[RewardBreakdown]:
    """`composite_reward` over a batch (one answer, difficulty and question per completion)."""
    config = config or _default_config()
    chosen = check_weights(weights) if weights is not None else reward_weights(config, step)
    difficulties = difficulties if difficulties is not None else [None] * len(completions)
    questions = questions if questions is not None else [None] * len(completions)
    return [
        _score(_Reply(c, q if isinstance(q, str) else None), a, chosen, config.verbosity_penalty, _difficulty(d, a))
        for c, a, d, q in zip(completions, answers, difficulties, questions)
    ]


# --------------------------------------------------------------------------------------------
# Tunix adapters
# --------------------------------------------------------------------------------------------


def _as_list(values: Any, n: int, name: str) -> list[Any]:
    if values is None:
        return [None] * n
    if isinstance(values, (str, bytes)):
        return [values] * n
    if hasattr(values, "tolist"):  # numpy arrays, jax arrays
        values = values.tolist()
    values = list(values) if isinstance(values, Iterable) else [values] * n
    if len(values) != n:
        raise ValueError(
            f"{name} has {len(values)} entries but there are {n} completions: the dataset's {name!r} "
            "field must hold one value per prompt (Tunix repeats it G times)"
        )
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]


def make_reward_fns(
    config: Any, step_fn: Callable[[], int] | None = None, per_component: bool = True
) -> list[Callable[..., list[float]]]:
    """Reward functions for Tunix's ``GRPOLearner(reward_fns=...)`` (part 03, used in part 06).

    Each has the signature Tunix calls, ``fn(prompts, completions, answer, **kwargs) -> list[float]``:
    `answer` is the dataset's gold column (repeated G times by Tunix), and the other dataset
    columns arrive in kwargs — a ``difficulty`` column, if present, drives the difficulty-aware
    trace scoring, and a ``question`` column (else the prompt) grounds the equations.
    `step_fn()` returns the 0-based optimiser step being rolled out (0 … ``config.max_steps`` − 1), for
    annealing (without it the static weights apply).

    Tunix adds the functions' outputs, so with `per_component` (default) there is one function
    per weighted component plus ``penalty_verbosity`` (negative), each returning weight × score,
    and their sum is exactly the composite total; Tunix then logs each as
    ``rewards/reward_<component>``. With ``per_component=False`` a single ``reward_composite``.
    The batch is scored once and shared between the functions; ``fns[0].last_breakdowns()``
    returns that batch's `RewardBreakdown` list for logging.
    """
    state: dict[str, Any] = {"key": None, "value": []}

    def breakdowns(prompts: Any, completions: Any, answer: Any, kwargs: dict[str, Any]) -> list[RewardBreakdown]:
        n = len(completions)
        completions = _as_list(completions, n, "completions")
        answers = _as_list(answer, n, "answer")
        diffs = _as_list(kwargs.get("difficulty"), n, "difficulty")
        questions = _as_list(kwargs["question"] if "question" in kwargs else prompts, n, "question")
        step = step_fn() if step_fn is not None else None
        key = (tuple(completions), tuple(answers), tuple(diffs), tuple(questions), step)
        if state["key"] != key:
            state["value"] = score_batch(completions, answers, config, step, diffs, questions=questions)
            state["key"] = key
        return state["value"]

    def component_fn(name: str) -> Callable[..., list[float]]:
        def fn(prompts, completions, answer, **kwargs):
            return [b.weights[name] * b.components[name] for b in breakdowns(prompts, completions, answer, kwargs)]

        fn.__name__ = fn.__qualname__ = f"reward_{name}"
        return fn

    def penalty_fn(prompts, completions, answer, **kwargs):
        out = []
        for b in breakdowns(prompts, completions, answer, kwargs):
            weighted = sum(b.contributions.values())
            out.append(-min(b.penalties["verbosity"], weighted))  # keeps the sum equal to b.total
        return out

    def composite_fn(prompts, completions, answer, **kwargs):
        return [b.total for b in breakdowns(prompts, completions, answer, kwargs)]

    penalty_fn.__name__ = penalty_fn.__qualname__ = "penalty_verbosity"
    composite_fn.__name__ = composite_fn.__qualname__ = "reward_composite"
    if not per_component:
        fns = [composite_fn]
    else:
        start, end = reward_weights(config, 0), final_weights(config)
        static = static_weights(config)
        used = [k for k in COMPONENTS if start[k] or end[k] or static[k]]
        fns = [component_fn(k) for k in used]
        if config.verbosity_penalty:
            fns.append(penalty_fn)
    for fn in fns:
        fn.last_breakdowns = lambda: list(state["value"])  # type: ignore[attr-defined]
    return fns
