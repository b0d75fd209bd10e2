"""The course's rewards: pure, fast functions of a reply's text (part 03).

Each component maps any string to a float in [0, 1] and never raises. `find_numbers`,
`answers_match` and `check_arithmetic` are the course's one number reader, answer checker and
arithmetic checker (part 07 uses them too). Every regex is linear-time; model text never
reaches ``eval``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import itertools
import math
import operator
import re
from fractions import Fraction
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

from course_utils.config import TrainingConfig
from course_utils.data import (DIFFICULTIES, NUMBER_PATTERN, canonical_number, difficulty_of,
                               format_number, gold_answer, parse_number, strip_answer_markup)
from course_utils.tokenizer import END_MARKERS

COMPONENTS = ("format", "coherence", "correctness", "efficiency", "calibration")
TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
EXPECTED_STEPS = {"easy": 2, "medium": 3, "hard": 5, None: 3}  # steps a trace should show
MAX_ANSWER_NUMBERS = 3  # more numbers than this in <answer> is answer stuffing: no answer
MAX_TRACE_CHARS = 20_000  # coherence reads this much reasoning; the verbosity penalty sees all
IDEAL_WORDS = (20, 250)  # efficiency: full marks inside, falling to 0 at 4 × the upper end
VERBOSE_WORDS = (400, 1200)  # verbosity: the penalty starts at 400 words, is full at 1,200
CORRECT_BASE = 0.7  # correctness: a right answer earns 0.7, plus 0.3 × reasoning depth
_default_config = functools.cache(TrainingConfig)  # the config of calls that pass none

_TRACE_NUMBER = re.compile(rf"(?<![\w.])-?{NUMBER_PATTERN}")
_ANSWER_NUMBER = re.compile(_TRACE_NUMBER.pattern + r"(?:\s?/\s?\d+)?")  # 3/4 too
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*\{\s*(\d[\d,.]*)\s*\}\s*\{\s*(\d[\d,.]*)\s*\}")
_LHS_TOKEN = re.compile(r"(?:\d[\d,]*(?:\.\d+)?|\.\d+)%?|[-+*/×÷−()]|[A-Za-z]+")
# The written result after "=": a number (decimal, fraction, percent), not glued to a single
# letter ("4S" is algebra) and not followed by more arithmetic ("= 16 + 20 + 48 = 84").
_RHS = re.compile(r"[ \t]*\$?[ \t]*(-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+(?![\d.]))?%?)"
                  r"(?![A-Za-z](?![A-Za-z]))(?!\d)(?![ \t]*[-+*/×÷x][ \t]*\$?[\d(.])")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_MARKER = re.compile(r"(?:(?:step|part)\s*\d{1,3}\s*[:.)\-]*|\d{1,3}\s*[.):]|[-*•>#]+|\*\*)\s*",
                     re.I)
_CONNECTIVES = re.compile(
    r"\b(so|therefore|thus|then|because|hence|since|which means|this means|that means|in total|"
    r"altogether|first|next|finally|now|after that|subtract|add|multiply|divide)\b", re.I)
_OVERCONFIDENT = re.compile(
    r"\b(definitely|certainly|absolutely|undoubtedly|obviously|guaranteed|without (?:a|any) doubt|"
    r"no doubt|for sure|100 ?% (?:sure|certain|correct)|i am (?:sure|certain|confident)|"
    r"i'm (?:sure|certain|confident)|trust me)\b", re.I)
_OPERATORS = "+-*/×÷−"
_AST_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
                  ast.Div: operator.truediv}
# Numbers a solution may use without taking them from the question: small counts, "twice",
# "half", percent, minutes, hours, days, weeks, months, dozens.
CONSTANTS = frozenset([str(i) for i in range(13)] + [
    "0.5", "0.25", "0.75", "1.5", "0.1", "0.01", "15", "16", "20", "24", "30", "36", "52", "60",
    "100", "360", "365", "1000", "1760", "2000", "3600", "5280"])
_NUMBER_WORDS = {
    **dict(zip("one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
               "fifteen sixteen seventeen eighteen nineteen".split(), range(1, 20))),
    **dict(zip("twenty thirty forty fifty sixty seventy eighty ninety".split(), range(20, 91, 10))),
    "twice": 2, "double": 2, "triple": 3, "half": 2, "dozen": 12, "hundred": 100,
    "thousand": 1000, "million": 10**6,
}


def _text(response: Any) -> str:
    """Any model output as text: bytes are decoded, None is empty, Gemma's end markers are cut."""
    if isinstance(response, (bytes, bytearray)):
        response = bytes(response).decode("utf-8", "replace")
    s = "" if response is None else str(response).rstrip()
    while s.endswith(END_MARKERS):
        s = s[: s.rfind("<")].rstrip()
    return s


class _Reply:
    """What the components read from one reply, computed once (part 03 internals)."""

    def __init__(self, response: Any, question: str | None = None) -> None:
        self.question = question if isinstance(question, str) and question.strip() else None
        s = self.text = _text(response)
        self.counts = tuple(s.count(t) for t in TAGS)
        r0, r1, a0, a1 = (s.find(t) for t in TAGS)
        self.gaps = None  # text before, between and after the blocks, when the tags are in order
        score = 0.1 * sum(c == 1 for c in self.counts)
        if self.counts == (1, 1, 1, 1) and r0 < r1 < a0 < a1:
            self.gaps = (s[:r0], s[r1 + 12:a0], s[a1 + 9:])
            score += 0.2 + 0.1 * sum(not gap.strip() for gap in self.gaps)
            score += 0.1 * bool(s[r0 + 11:r1].strip() and s[a0 + 8:a1].strip())
        self.format_score = min(1.0, round(score, 10))
        # The reasoning: the first <reasoning> block (to </reasoning>, <answer> or the end), else
        # whatever precedes the first <answer>, else the whole reply.
        if r0 >= 0:
            end = s.find("</reasoning>", r0 + 11)
            end = end if end >= 0 else s.find("<answer>", r0 + 11)
            self.reasoning = s[r0 + 11: end if end >= 0 else len(s)]
        else:
            self.reasoning = s[:a0] if a0 >= 0 else s
        a1 = s.rfind("</answer>")  # the answer: the last complete <answer>…</answer> block
        a0 = s.rfind("<answer>", 0, a1) if a1 >= 0 else -1
        self.answer_block = s[a0 + 8:a1] if a0 >= 0 else None
        self.answer = None if self.answer_block is None else normalize_answer(self.answer_block)
        self.words = len(s.split()) if len(s) < 200_000 else len(s) // 6
        lines = [line for line in (raw.strip() for raw in s.split("\n", 5000)[:5000]) if line]
        self.repeated_share = 0.0 if len(lines) < 4 else 1.0 - len(set(lines)) / len(lines)
        low, high = VERBOSE_WORDS
        length, looping = (self.words - low) / (high - low), (self.repeated_share - 0.2) / 0.6
        self.verbosity = min(1.0, max(0.0, length, looping))
        low, high = IDEAL_WORDS
        self.efficiency = min(self.words / low, 1.0, max(0.0, 1 - (self.words - high) / (3 * high)))

    @functools.cached_property
    def overconfidence(self) -> float:
        """0, 0.5 or 1: no, one, or two or more over-confident phrases."""
        s = self.text
        view = s if len(s) <= 25_000 else s[:20_000] + "\n" + s[-5_000:]
        return sum(1 for _ in itertools.islice(_OVERCONFIDENT.finditer(view), 2)) / 2

    @functools.cached_property
    def trace(self) -> _Trace:
        return _Trace(self.reasoning[:MAX_TRACE_CHARS], self.answer, self.question)


class _Trace:
    """Step and equation statistics of a reasoning text (part 03 internals): units (lines, long
    ones split into sentences), the share of them that are distinct and substantive (quality),
    steps that work with numbers, right / wrong / made-up / used equations, connectives, and
    whether the reasoning reaches the answer (leads)."""

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
        contents: dict[str, str] = {}  # the distinct substantive units, step markers cut
        for unit in units:
            m = _MARKER.match(unit)
            content = unit[m.end():] if m else unit
            if (content.count(" ") >= 2 or "=" in content) and any(c.isalnum() for c in content):
                contents.setdefault(" ".join(content.lower().split()), content)
        grounding = question_numbers(question) if question else None
        known = set(grounding) | CONSTANTS if grounding else None  # None: nothing to ground in
        asked = " ".join(question.lower().split()) if question else ""
        answer_key = answer if answer and answer[-1].isdigit() else None
        equations: list[tuple[int, str]] = []
        last_seen: dict[str, int] = {}
        tainted: set[str] = set()  # the numbers of made-up equations: never known
        with_numbers: list[str] = []
        numbers: set[str] = set()
        budget = [200]  # at most 200 '=' signs are examined per reply
        self.steps = self.invalid = self.fabricated = 0
        for i, (key, content) in enumerate(contents.items()):
            results: list[str] = []
            made_up: set[str] = set()
            for lhs, rhs, ok in _equations(content, budget):
                if not ok:
                    self.invalid += 1
                    continue
                result = _num_key(rhs.rstrip("%"))
                operands = [_num_key(t.rstrip("%")) for t in lhs if t[-1].isdigit() or t[-1] == "%"]
                unknown = [o for o in operands if known is not None and o not in known]
                # One unknown operand beside known ones is a fact the writer knows (26 letters);
                # two or more, or one from a made-up equation, is made up.
                if not unknown or (len(unknown) == 1 and len(operands) > 1
                                   and unknown[0] not in tainted and unknown[0] not in made_up):
                    results.append(result)
                    if known is not None:
                        known.add(result.lstrip("-"))
                else:
                    made_up.update(operands + [result.lstrip("-")])
            tainted |= made_up
            equations += [(i, result) for result in results]
            numbers = set(find_numbers(content))
            if known is not None:  # the numbers a step states may be used later, unless made up
                known.update(n.lstrip("-") for n in numbers if n.lstrip("-") not in tainted)
            self.fabricated += bool(made_up) and not results
            if numbers and (results or not made_up) and not (len(content) >= 20 and key in asked):
                self.steps += 1
                with_numbers.append(content)
            last_seen.update(dict.fromkeys(numbers, i))
        self.units, self.valid = len(units), len(equations)
        self.quality = (len(contents) - self.fabricated) / len(units) if units else 0.0
        self.used = sum(rhs == answer_key or last_seen.get(rhs, -1) > i for i, rhs in equations)
        self.connectives = len({m.lower() for m in _CONNECTIVES.findall("\n".join(with_numbers))})
        self.leads = answer_key is not None and (
            answer_key in numbers or any(rhs == answer_key for _, rhs in equations))


def _num_key(token: str) -> str:
    """A number token as a comparable key: ``"1,080.50"`` → ``"1080.5"``, ``"24.0"`` → ``"24"``."""
    token = token.replace(",", "")
    if "." in token:
        token = token.rstrip("0").rstrip(".")
        if token.startswith((".", "-.")):
            token = token.replace(".", "0.", 1)
    return "0" if token in ("-0", "", "0.") else token


@functools.lru_cache(maxsize=4096)
def question_numbers(question: str) -> frozenset[str]:
    """The numbers written in `question` (digits or words), each also divided by 100 (part 03):
    with `CONSTANTS`, what an honest solution may start from."""
    values = [Fraction(_num_key(t).lstrip("-")) for t in _TRACE_NUMBER.findall(question[:5000])]
    words = re.findall(r"[a-z]+", question[:5000].lower())
    values += [Fraction(_NUMBER_WORDS[w]) for w in words if w in _NUMBER_WORDS]
    return frozenset(format_number(v / d) for v in values for d in (1, 100))


def _equations(text: str, budget: list[int] | None = None) -> Iterator[tuple[list[str], str, bool]]:
    """Each ``a op b … = c`` of `text` as (left-side tokens, result, holds?), at most ``budget[0]``:
    each ``=`` is examined once with a left side of at most 80 characters (linear time)."""
    pos, prev = text.find("="), 0
    while pos >= 0 and (budget is None or budget[0] > 0):
        if budget is not None:
            budget[0] -= 1
        r = _RHS.match(text, pos + 1)
        lhs = _left_side(text[max(prev, pos - 80):pos]) if r else None
        value = _evaluate(lhs) if lhs else None
        if value is not None:
            yield lhs, r.group(1), _close(value, r.group(1))
        if lhs:
            prev = r.end()
        pos = text.find("=", pos + 1)


def _left_side(window: str) -> list[str] | None:
    """The arithmetic just before an ``=`` as tokens, or None (no expression, or algebra such as
    ``2S + 4S``, ``M + 4``): the tail of the last clause where numbers and operators alternate,
    unit words dropped, ``x`` / ``times`` read as ×, ``$6/day`` a rate, ``220(.40)`` a product."""
    cut = max(window.rfind(". "), window.rfind(", "), window.rfind(":"), window.rfind(";"),
              window.rfind("\n"), window.rfind("="))
    tokens: list[str] = []
    end = -1
    for m in _LHS_TOKEN.finditer(window, cut + 1):
        t = m.group(0)
        if t[0].isalpha():
            after = window[m.end():].lstrip(" \t$")[:1] or "="
            if len(t) == 1 and t != "x" and (m.start() == end or after in "+-*/=)"):
                return None  # "2S", "M + 4": algebra with a variable, not arithmetic
            if t.lower() in ("x", "times"):
                tokens.append("*")
            elif tokens and tokens[-1] in _OPERATORS:
                tokens.pop()  # "$6/day", "non-valuable": no operator before a word
            continue
        if tokens and (t == "(" and tokens[-1][-1] in "0123456789%)"
                       or t[-1].isdigit() and tokens[-1] == ")"):
            tokens.append("*")  # 220(.40) and (1/2)4: implicit multiplication
        tokens.append(t)
        end = m.end()
    for k in range(len(tokens) - 2, -1, -1):  # two numbers in a row: keep what follows
        if tokens[k][-1].isdigit() and tokens[k + 1][-1].isdigit():
            tokens = tokens[k + 1:]
            break
    while tokens and tokens[0] in ("+", "*", "/", "×", "÷", ")"):
        tokens = tokens[1:]
    if not 3 <= len(tokens) <= 41 or not any(t in _OPERATORS for t in tokens[1:]):
        return None
    return tokens


def _evaluate(tokens: list[str]) -> float | None:
    """The value of `_left_side`'s tokens or None: parsed by `ast` and walked node by node
    (numbers, unary minus, + − × ÷ only; never ``eval``)."""
    source = [repr(float(t.rstrip("%").replace(",", "")) / (100 if t[-1] == "%" else 1))
              if t[-1].isdigit() or t[-1] == "%" else {"×": "*", "÷": "/", "−": "-"}.get(t, t)
              for t in tokens]

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPERATORS:
            return _AST_OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    try:
        result = value(ast.parse(" ".join(source), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return result if math.isfinite(result) else None


def _close(value: float, text: str) -> bool:
    """Whether `value` is the written result `text` (``24``, ``0.33``, ``3/4``, ``60%``) to the
    decimals written; ``60%`` matches 60 and 0.6."""
    written = text.rstrip("%").replace(",", "")
    if "/" in written:
        num, den = (float(part) for part in written.split("/"))
        if not den:
            return False
        rhs, tolerance = num / den, 1e-9 * max(1.0, abs(num / den))
    else:
        rhs, decimals = float(written), len(written.partition(".")[2])
        tolerance = 1e-6 * max(1.0, abs(rhs))
        if decimals:
            tolerance = 0.5 * 10.0**-decimals + 1e-9 * abs(rhs)
    percent = text.endswith("%") and abs(value * 100 - rhs) <= tolerance
    return abs(value - rhs) <= tolerance or percent


class Calculation(NamedTuple):
    """One written calculation ``left = result`` and whether it holds (parts 03 and 07)."""

    text: str
    ok: bool


def check_arithmetic(text: Any) -> list[Calculation]:
    """Every written calculation ``a op b … = c`` in `text`, with its truth (parts 03 and 07):
    unit words skipped, ``15%`` is 0.15, algebra not judged, decimals rounded as written."""
    if not isinstance(text, str):
        return []
    return [Calculation(f"{' '.join(lhs)} = {rhs}", ok) for lhs, rhs, ok in _equations(text)]


def find_numbers(text: Any) -> list[str]:
    """Every number written in `text`, normalised (``"$1,080.50"`` → ``"1080.5"``), in order."""
    return [_num_key(t) for t in _TRACE_NUMBER.findall(text)] if isinstance(text, str) else []


def normalize_answer(content: str) -> str:
    """An ``<answer>`` block's content normalised (part 03): its number in canonical form, else the
    last of up to `MAX_ANSWER_NUMBERS` numbers, else the text with whitespace collapsed."""
    content = content.strip()
    if len(content) > 500:
        return " ".join(content.split())
    exact = canonical_number(content)
    if exact is not None:
        return exact
    text = strip_answer_markup(content)
    numbers = _ANSWER_NUMBER.findall(text)
    expression = any(mark in text for mark in ("\\", "^", "{", "sqrt"))  # such as \\sqrt{324}
    if 1 <= len(numbers) <= MAX_ANSWER_NUMBERS and not expression:
        last = canonical_number(numbers[-1].replace(" ", ""))
        if last is not None:
            return last
    return " ".join(text.split())


def extract_answer(response: Any) -> str | None:
    """The normalised content of the last ``<answer>…</answer>`` block; None when there is none."""
    return _Reply(response).answer


@functools.lru_cache(maxsize=16384, typed=True)
def _gold(ground_truth: Any) -> tuple[str, Fraction | None]:
    """The normalised gold answer and its value (None when it is not a number)."""
    if isinstance(ground_truth, (bytes, bytearray)):
        ground_truth = bytes(ground_truth).decode("utf-8", "replace")
    if isinstance(ground_truth, bool) or ground_truth is None:
        raise ValueError(f"ground_truth={ground_truth!r}: pass the gold answer (e.g. '72') or a "
                         "GSM8K solution")
    if isinstance(ground_truth, float) and ground_truth.is_integer():
        ground_truth = int(ground_truth)
    text = str(ground_truth).strip()
    gold = gold_answer(text) if "####" in text else canonical_number(text)
    gold = gold or " ".join(strip_answer_markup(text).split())
    if not gold:
        raise ValueError("ground_truth is empty; pass the gold answer or a GSM8K solution ending "
                         "in '#### N'")
    return gold, parse_number(gold)


def gold_value(ground_truth: Any) -> str:
    """The normalised gold answer: from a bare answer, a number, or a solution ending ``#### N``."""
    return _gold(ground_truth)[0]


def answers_match(pred: str | None, ground_truth: Any) -> bool:
    """True when the answer `pred` (normalised text) equals the gold (part 03): numbers exactly, as
    fractions; anything else (``\\sqrt{324}``) as text, not simplified."""
    if pred is None:
        return False
    gold, gold_num = _gold(ground_truth)
    pred_num = parse_number(pred)
    return pred_num == gold_num if pred_num is not None and gold_num is not None else pred == gold


def is_correct(response: Any, ground_truth: Any) -> bool:
    """True when the reply's answer equals `ground_truth` (an answer or a GSM8K solution)."""
    return answers_match(_Reply(response).answer, ground_truth)


def _difficulty(difficulty: str | None, ground_truth: Any = None) -> str | None:
    if difficulty in DIFFICULTIES:
        return difficulty
    if isinstance(ground_truth, str) and "####" in ground_truth:
        return difficulty_of(ground_truth)
    return None


def _components(reply: _Reply, correct: bool, difficulty: str | None) -> dict[str, float]:
    t, expected, coherence = reply.trace, EXPECTED_STEPS[difficulty], 0.0
    if t.units:
        equations = 0.0
        if t.valid:
            used = t.used + 0.5 * (t.valid - t.used)
            equations = min(1.0, used / expected) * t.valid / (t.valid + t.invalid)
        coherence = t.quality * (0.35 * min(1.0, t.steps / expected) + 0.35 * equations
                                 + 0.15 * min(1.0, t.connectives / 2) + 0.15 * t.leads)
        coherence = min(1.0, max(0.0, coherence))
    return {
        "format": reply.format_score,
        "coherence": coherence,
        "correctness": CORRECT_BASE + (1.0 - CORRECT_BASE) * coherence if correct else 0.0,
        "efficiency": reply.efficiency,
        "calibration": 1.0 if correct else 1.0 - reply.overconfidence,
    }


def format_reward(response: Any) -> float:
    """Structure score in [0, 1] (part 03): 1.0 for ``<reasoning>…</reasoning>`` then
    ``<answer>…</answer>``, both non-empty, nothing but whitespace around; partial credit."""
    return _Reply(response).format_score


def coherence_reward(response: Any, difficulty: str | None = None,
                     question: str | None = None) -> float:
    """Reasoning quality in [0, 1] (part 03): steps (as many as `difficulty` expects), right
    equations used later, connectives, reaching the answer; made-up equations pay nothing."""
    difficulty = difficulty if difficulty in DIFFICULTIES else None
    return _components(_Reply(response, question), False, difficulty)["coherence"]


def correctness_reward(response: Any, ground_truth: Any, difficulty: str | None = None,
                       question: str | None = None) -> float:
    """0 for a wrong or missing answer, 0.7 + 0.3 × `coherence_reward` for a right one (part 03)."""
    reply = _Reply(response, question)
    correct = answers_match(reply.answer, ground_truth)
    return _components(reply, correct, _difficulty(difficulty, ground_truth))["correctness"]


def efficiency_reward(response: Any) -> float:
    """1 for 20–250 words, less when shorter, falling to 0 at 1,000 words (part 03)."""
    return _Reply(response).efficiency


def calibration_reward(response: Any, ground_truth: Any) -> float:
    """1, except for a wrong answer worded over-confidently: 0.5 for one phrase, 0 for two."""
    reply = _Reply(response)
    return 1.0 if answers_match(reply.answer, ground_truth) else 1.0 - reply.overconfidence


def verbosity(response: Any) -> float:
    """How far a reply runs on, in [0, 1]: its words past 400 (1 at 1,200) or repeated lines."""
    return _Reply(response).verbosity


def static_weights(config: Any = None) -> dict[str, float]:
    """The config's four weights (format, coherence, correctness, efficiency) and calibration 0."""
    return {**(config or _default_config()).reward_weights, "calibration": 0.0}


def annealed_weights(config: Any, step: float) -> dict[str, float]:
    """The reward weights at 0-based optimiser `step` when annealing (part 03); they sum to 1.

    Trace (format + coherence) and correctness weights move linearly from their start to their
    end values, which the last step (max_steps − 1) pays exactly; calibration gets the rest."""
    config = config or _default_config()
    span = config.max_steps - 1  # t = step / span in [0, 1] (NaN: 0); a one-step run: 1
    t = min(1.0, max(0.0, float(step) / span)) if span > 0 else 1.0
    trace, correct = config.anneal_trace_weight_start, config.anneal_correct_weight_start
    trace += (config.anneal_trace_weight_end - trace) * t
    correct += (config.anneal_correct_weight_end - correct) * t
    f, c = config.format_reward_weight, config.coherence_reward_weight
    share = f / (f + c) if f + c > 0 else 0.5
    efficiency = config.efficiency_reward_weight
    return {"format": trace * share, "coherence": trace * (1.0 - share), "correctness": correct,
            "efficiency": efficiency, "calibration": max(0.0, 1.0 - trace - correct - efficiency)}


def reward_weights(config: Any = None, step: float | None = None) -> dict[str, float]:
    """The weights `composite_reward` uses: annealed at `step` when the config anneals and a
    step is given, else the static config weights."""
    config = config or _default_config()
    if config.anneal_reward_weights and step is not None:
        return annealed_weights(config, step)
    return static_weights(config)


def final_weights(config: Any = None) -> dict[str, float]:
    """The weights the last GRPO step pays (part 03); evaluation (part 07) scores with them."""
    config = config or _default_config()
    return reward_weights(config, config.max_steps - 1)


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """`weights` completed with zeros for the missing components; ValueError if a name is
    unknown, a weight is negative or not finite, or they do not sum to 1."""
    unknown = sorted(set(weights) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown reward component(s) {unknown}; the components are "
                         f"{', '.join(COMPONENTS)}")
    out = {name: weights.get(name, 0.0) for name in COMPONENTS}
    for name, w in out.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weight {name}={w!r} must be a finite number >= 0")
    if abs(sum(out.values()) - 1.0) > 1e-6:
        raise ValueError(f"reward weights must sum to 1 but sum to {sum(out.values()):.6g}: {out}")
    return {name: float(w) for name, w in out.items()}


@dataclasses.dataclass(frozen=True)
class RewardBreakdown:
    """A composite score and where it came from (part 03): `total` = Σ weights[k] ×
    components[k] − penalties["verbosity"], clipped to [0, 1]."""

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


def composite_reward(response: Any, ground_truth: Any, weights: Mapping[str, float] | None = None,
                     step: float | None = None, config: Any = None, difficulty: str | None = None,
                     question: str | None = None) -> RewardBreakdown:
    """The weighted reward of one reply, with its breakdown (part 03): `weights` (summing to 1) or
    `reward_weights`, minus ``config.verbosity_penalty`` × `verbosity`. `question` grounds the
    equations; `difficulty` (else read from a full-solution `ground_truth`) sets the steps due."""
    config = config or _default_config()
    chosen = check_weights(weights) if weights is not None else reward_weights(config, step)
    reply, difficulty = _Reply(response, question), _difficulty(difficulty, ground_truth)
    correct = answers_match(reply.answer, ground_truth)
    components = _components(reply, correct, difficulty)
    penalty = config.verbosity_penalty * reply.verbosity if config.verbosity_penalty else 0.0
    total = min(1.0, max(0.0, sum(chosen[k] * components[k] for k in COMPONENTS) - penalty))
    return RewardBreakdown(total, components, chosen, {"verbosity": penalty}, correct, reply.answer,
                           difficulty)


def score_batch(completions: Sequence[Any], answers: Sequence[Any], config: Any = None,
                step: float | None = None, difficulties: Sequence[str | None] | None = None,
                weights: Mapping[str, float] | None = None,
                questions: Sequence[str | None] | None = None) -> list[RewardBreakdown]:
    """`composite_reward` over a batch (one answer, difficulty and question per completion)."""
    difficulties = [None] * len(completions) if difficulties is None else difficulties
    questions = [None] * len(completions) if questions is None else questions
    return [composite_reward(c, a, weights, step, config, d, q)
            for c, a, d, q in zip(completions, answers, difficulties, questions)]


def _as_list(values: Any, n: int, name: str) -> list[Any]:
    values = values.tolist() if hasattr(values, "tolist") else values  # numpy and jax arrays
    if values is None or isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        values = [values] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries but there are {n} completions: the "
                         f"dataset's {name!r} field must hold one value per prompt (Tunix repeats "
                         "it G times)")
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]


def make_reward_fns(config: Any,
                    step_fn: Callable[[], int] | None = None) -> list[Callable[..., list[float]]]:
    """Reward functions for Tunix's ``GRPOLearner(reward_fns=...)`` (parts 03 and 06).

    Tunix calls each as ``fn(prompts, completions, answer, **kwargs)`` (other dataset columns,
    such as ``difficulty`` and ``question``, in kwargs) and adds their outputs: weight × score per
    weighted component, plus ``penalty_verbosity``. `step_fn()` gives the step for annealing;
    ``fns[0].last_breakdowns()`` returns the last batch's `RewardBreakdown` list."""
    state: dict[str, Any] = {"key": None, "value": []}

    def breakdowns(prompts: Any, completions: Any, answer: Any, kwargs: dict) -> list[Any]:
        n, step = len(completions), step_fn() if step_fn is not None else None
        completions = _as_list(completions, n, "completions")
        answers = _as_list(answer, n, "answer")
        difficulties = _as_list(kwargs.get("difficulty"), n, "difficulty")
        questions = _as_list(kwargs.get("question", prompts), n, "question")
        key = (tuple(completions), tuple(answers), tuple(difficulties), tuple(questions), step)
        if state["key"] != key:
            state["value"] = score_batch(completions, answers, config, step, difficulties,
                                         questions=questions)
            state["key"] = key
        return state["value"]

    def component_fn(name: str) -> Callable[..., list[float]]:
        def fn(prompts, completions, answer, **kwargs):
            return [b.contributions[name] for b in breakdowns(prompts, completions, answer, kwargs)]

        fn.__name__ = fn.__qualname__ = f"reward_{name}"
        return fn

    def penalty_verbosity(prompts, completions, answer, **kwargs):
        # never more than the weighted sum, so that the functions add up to the (clipped) total
        return [-min(b.penalties["verbosity"], sum(b.contributions.values()))
                for b in breakdowns(prompts, completions, answer, kwargs)]

    paid = (reward_weights(config, 0), final_weights(config), static_weights(config))
    fns = [component_fn(k) for k in COMPONENTS if any(w[k] for w in paid)]
    fns += [penalty_verbosity] if config.verbosity_penalty else []
    for fn in fns:
        fn.last_breakdowns = lambda: list(state["value"])  # type: ignore[attr-defined]
    return fns
