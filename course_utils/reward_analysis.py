"""Looking inside the reward: analyser, debugger, hacking catalogue, ablations, plots (part 05).

>>> analyzer = RewardAnalyzer(config, data_loader=lambda: load_gsm8k("test", limit=200))  # doctest: +SKIP
>>> result = analyzer.analyze_response(reply, ground_truth="72", prompt=prompt)            # doctest: +SKIP
>>> analyzer.print_breakdown(result)                                                       # doctest: +SKIP
>>> RewardDebugger(config).diagnose_response(reply, "72")                                  # doctest: +SKIP
['<answer> is missing: the reply has no final answer block', ...]

Everything the part-05 tables show is computed here, so the tests check the same numbers the
notebook prints: `catalogue_table` (every hacking attempt against the honest answer),
`weight_presets`, `ablation_table`, `gold_vs_perturbed`.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, Iterable, Mapping, Sequence

from course_utils.data import (
    SYSTEM_PROMPT,
    Example,
    _question_key,
    canonical_number,
    format_solution,
    parse_number,
    reasoning_lines,
)
from course_utils.tokenizer import END_OF_TURN
from course_utils.rewards import (
    _ANSWER_NUMBER,
    COMPONENTS,
    MAX_ANSWER_NUMBERS,
    TAGS,
    VERBOSE_WORDS,
    RewardBreakdown,
    answers_match,
    find_numbers,
    _overconfidence,
    _Reply,
    annealed_weights,
    final_weights,
    composite_reward,
    gold_value,
    question_numbers,
    static_weights,
)

# A problem written for the course (GSM8K style) and replies of the kinds small models write.
SAMPLE_PROBLEM = Example(
    question="A baker makes 48 muffins in the morning and half as many in the afternoon. "
    "How many muffins does she make in total?",
    solution="In the afternoon she makes 48 / 2 = <<48/2=24>>24 muffins.\n"
    "In total she makes 48 + 24 = <<48+24=72>>72 muffins.\n#### 72",
    answer="72",
    difficulty="easy",
    source="course",
)
SAMPLE_REPLIES: dict[str, str] = {
    "clean": "<reasoning>\nIn the morning the baker makes 48 muffins.\nIn the afternoon she makes half "
    "as many, so 48 / 2 = 24 muffins.\nSo in total she makes 48 + 24 = 72 muffins.\n</reasoning>\n"
    "<answer>72</answer>",
    "markdown steps": "<reasoning>\n**Step 1:** Morning muffins: 48\n**Step 2:** Afternoon muffins: "
    "48 ÷ 2 = 24\n**Step 3:** Total: 48 + 24 = 72\n</reasoning>\n<answer>72 muffins</answer>",
    "LaTeX and boxed": "<reasoning>\nThe afternoon batch is $\\frac{48}{2} = 24$ muffins, so the total "
    "is $48 + 24 = 72$.\n</reasoning>\n<answer>\\boxed{72}</answer>",
    "chatty preamble": "Sure! Let's solve this step by step.\n<reasoning>\nAfternoon: 48 / 2 = 24 "
    "muffins.\nTotal: 48 + 24 = 72 muffins.\n</reasoning>\n<answer>72</answer>\nI hope this helps!",
    "arithmetic slip": "<reasoning>\nIn the afternoon she makes 48 / 2 = 24 muffins.\nThen the total "
    "is 48 + 24 = 62 muffins.\n</reasoning>\n<answer>62</answer>",
    "misread the question": "<reasoning>\nHalf as many means twice as many, so 48 * 2 = 96 muffins in "
    "the afternoon.\nTotal: 48 + 96 = 144 muffins.\n</reasoning>\n<answer>144</answer>",
    "over-confident and wrong": "<reasoning>\nShe bakes 48 muffins twice, so 48 + 48 = 96.\nI am "
    "absolutely certain this is definitely right.\n</reasoning>\n<answer>96</answer>",
    "cut off at the token limit": "<reasoning>\nIn the morning she bakes 48 muffins. In the afternoon "
    "she bakes half as many, which is 48 / 2 = 24 muffins. Adding them, 48 + 24 =",
    "no tags": "The baker makes 48 / 2 = 24 muffins in the afternoon, so 48 + 24 = 72 in total. "
    "The answer is 72.",
    "echoes the instruction": SYSTEM_PROMPT + "\n" + SAMPLE_PROBLEM.question,
}


# --------------------------------------------------------------------------------------------
# The debugger
# --------------------------------------------------------------------------------------------


def _preview(text: str, n: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[: n - 1] + "…")


class RewardDebugger:
    """Human-readable findings about one reply (part 05): what costs it reward, and why."""

    def __init__(self, config: Any = None) -> None:
        self.config = config

    def diagnose_response(self, response: Any, ground_truth: Any = None, question: str | None = None) -> list[str]:
        """Findings, most important first; an empty list means nothing to fix.

        Looks for: missing, repeated, unclosed or misordered tags; text before, between or
        after the blocks; empty reasoning or answer; an answer that is not one number (or is
        stuffed with many); the right answer written outside the tags; a wrong answer; wrong
        arithmetic; bare step markers; repetition and length; over-confident wording; and,
        given the `question`, arithmetic on numbers that come from nowhere.
        """
        reply = _Reply(response, question)
        s, found = reply.text, []
        if not s.strip():
            return ["the reply is empty"]
        for tag, count in zip(TAGS, reply.counts):
            if count == 0:
                found.append(f"{tag} is missing" + (": the reply has no final answer block" if tag == "<answer>" else ""))
            elif count > 1:
                found.append(f"{tag} appears {count} times (expected exactly once)")
        last_open = s.rfind("<answer>")
        if last_open >= 0 and s.find("</answer>", last_open) < 0:
            found.append("the last <answer> is never closed (was the reply cut off at the token limit?)")
        if reply.counts == (1, 1, 1, 1):
            r0, r1, a0, a1 = (s.find(t) for t in TAGS)
            if not r0 < r1 < a0 < a1:
                found.append("the tags are out of order: expected <reasoning>…</reasoning> then <answer>…</answer>")
            else:
                if s[:r0].strip():
                    found.append(f"text before <reasoning>: {_preview(s[:r0])}")
                if s[r1 + 12:a0].strip():
                    found.append(f"text between </reasoning> and <answer>: {_preview(s[r1 + 12:a0])}")
                if s[a1 + 9:].strip():
                    found.append(f"text after </answer>: {_preview(s[a1 + 9:])}")
        if "<reasoning>" in s and not reply.reasoning.strip():
            found.append("the reasoning is empty")
        found += self._answer_findings(reply, ground_truth)
        found += self._trace_findings(reply)
        return found

    def _answer_findings(self, reply: _Reply, ground_truth: Any) -> list[str]:
        found = []
        block = reply.answer_block
        if block is not None:
            answer = reply.answer
            numbers = _count_numbers(block)
            if not block.strip():
                found.append("the answer block is empty")
            elif numbers == 0:
                found.append(f"the answer is not a number: {_preview(block)}")
            elif numbers > MAX_ANSWER_NUMBERS:
                found.append(f"the answer holds {numbers} numbers (answer stuffing?): give exactly one")
            elif parse_number(answer or "") is None:
                found.append(f"the answer is not one number: {_preview(block)}")
            elif canonical_number(block) is None:
                found.append(f"the answer holds more than a number; read as {answer} from {_preview(block)}")
        if ground_truth is None:
            return found
        gold = gold_value(ground_truth)
        correct = answers_match(reply.answer, ground_truth)
        if block is not None and parse_number(reply.answer or "") is not None and not correct:
            found.append(f"the answer {reply.answer} is wrong (gold {gold})")
        if not correct and _mentions(reply.text.replace(block or "\0", " "), gold):
            found.append(f"the right answer {gold} appears outside the <answer> tags, which earns nothing")
        if not correct and _overconfidence(reply):
            found.append("over-confident wording with a wrong answer (costs the calibration share)")
        return found

    def _trace_findings(self, reply: _Reply) -> list[str]:
        found = []
        trace = reply.trace
        if trace.units and trace.quality < 0.5:
            found.append(f"only {trace.steps} of {trace.units} reasoning lines are distinct, substantive steps "
                         "(bare step markers or repeats earn nothing)")
        if trace.invalid:
            found.append(f"{trace.invalid} equation(s) in the reasoning are arithmetically wrong")
        if trace.fabricated:
            found.append(f"{trace.fabricated} step(s) compute with numbers that are neither in the question nor "
                         "in earlier steps (made-up arithmetic earns nothing)")
        if reply.answer is not None and trace.units and not trace.leads:
            found.append("the reasoning never reaches the final answer")
        if reply.repeated_share > 0.2:
            found.append(f"{reply.repeated_share:.0%} of the lines repeat earlier ones (verbosity penalty)")
        if reply.words > VERBOSE_WORDS[0]:
            found.append(f"the reply is long: {reply.words:,} words (the verbosity penalty starts at {VERBOSE_WORDS[0]})")
        return found

    def report(self, response: Any, ground_truth: Any = None, question: str | None = None) -> str:
        """The findings as text, one per line, or 'no problems found'."""
        findings = self.diagnose_response(response, ground_truth, question)
        return "\n".join(f"- {f}" for f in findings) if findings else "no problems found"


def _count_numbers(text: str) -> int:
    return len(_ANSWER_NUMBER.findall(text[:2000]))


def _mentions(text: str, gold: str) -> bool:
    return gold in find_numbers(text[-20_000:])


# --------------------------------------------------------------------------------------------
# The analyser
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Analysis:
    """One analysed reply: its reward breakdown, the debugger's findings, and the example found."""

    response: str
    ground_truth: str
    breakdown: RewardBreakdown
    findings: list[str]
    example: Example | None = None

    @property
    def total(self) -> float:
        return self.breakdown.total


def question_from_prompt(prompt: str) -> str:
    """The question inside a prompt built by `build_prompt` (or the text itself otherwise)."""
    marker = SYSTEM_PROMPT + "\n\n"
    if marker in prompt:
        prompt = prompt.split(marker, 1)[1]
    return prompt.split(END_OF_TURN, 1)[0].strip()


class RewardAnalyzer:
    """Score replies the way training does and show where the reward comes from (part 05).

    `data_loader` gives the problems: a list of `Example`, or a function returning one
    (e.g. ``lambda: load_gsm8k("test", limit=200)``), read once on first use. With it,
    `analyze_response` finds the problem (gold answer, difficulty) from the prompt alone.
    """

    def __init__(self, config: Any, data_loader: Iterable[Example] | Callable[[], Iterable[Example]] | None = None,
                 step: float | None = None) -> None:
        self.config = config
        self.step = step
        self._loader = data_loader
        self._examples: list[Example] | None = None
        self._index: dict[str, Example] = {}
        self.debugger = RewardDebugger(config)

    @property
    def examples(self) -> list[Example]:
        if self._examples is None:
            source = self._loader() if callable(self._loader) else self._loader
            self._examples = list(source or [])
            self._index = {_question_key(e.question): e for e in self._examples}
        return self._examples

    def find_example(self, prompt: str | None) -> Example | None:
        """The example whose question the prompt holds, if the data has it."""
        if not prompt:
            return None
        self.examples  # noqa: B018 (builds the index)
        return self._index.get(_question_key(question_from_prompt(prompt)))

    def analyze_response(self, response: Any, ground_truth: Any = None, prompt: str | None = None,
                         step: float | None = None) -> Analysis:
        """Score `response` against `ground_truth` (or the gold of the problem in `prompt`).

        The difficulty comes from the problem found, else from a full-solution ground truth;
        the question (for grounding the equations) from the prompt.
        """
        example = self.find_example(prompt)
        if ground_truth is None:
            if example is None:
                raise ValueError("give ground_truth, or a prompt whose question is in the analyser's data")
            ground_truth = example.solution
        difficulty = example.difficulty if example else None
        question = question_from_prompt(prompt) if prompt else None
        breakdown = composite_reward(response, ground_truth, step=self.step if step is None else step,
                                     config=self.config, difficulty=difficulty, question=question)
        findings = self.debugger.diagnose_response(response, ground_truth, question)
        return Analysis(str(response), str(ground_truth), breakdown, findings, example)

    def analyze_batch(self, responses: Sequence[Any], ground_truths: Sequence[Any],
                      prompts: Sequence[str | None] | None = None) -> list[Analysis]:
        prompts = prompts or [None] * len(responses)
        return [self.analyze_response(r, g, p) for r, g, p in zip(responses, ground_truths, prompts)]

    @staticmethod
    def summary(results: Sequence[Analysis]) -> dict[str, float]:
        """Mean total and components, accuracy and strict-format rate over analysed replies."""
        n = max(1, len(results))
        out = {"n": float(len(results)), "total": sum(r.total for r in results) / n,
               "accuracy": sum(r.breakdown.correct for r in results) / n,
               "strict_format": sum(r.breakdown.components["format"] == 1.0 for r in results) / n}
        for k in COMPONENTS:
            out[k] = sum(r.breakdown.components[k] for r in results) / n
        return out

    @staticmethod
    def print_breakdown(result: Analysis | RewardBreakdown) -> None:
        """Print the components, weights, contributions, penalty and total as a small table."""
        b = result.breakdown if isinstance(result, Analysis) else result
        print(f"{'component':<13}{'score':>7}{'weight':>8}{'adds':>8}")
        for k in COMPONENTS:
            print(f"{k:<13}{b.components[k]:>7.3f}{b.weights[k]:>8.3f}{b.contributions[k]:>8.3f}")
        print(f"{'verbosity':<13}{'':>7}{'':>8}{-b.penalties['verbosity']:>8.3f}")
        print(f"{'total':<13}{'':>7}{'':>8}{b.total:>8.3f}")
        print(f"answer {b.answer!r} is {'right' if b.correct else 'wrong'}; difficulty {b.difficulty or 'unknown'}")
        if isinstance(result, Analysis):
            print("findings:", "none" if not result.findings else "")
            for f in result.findings:
                print("  -", f)

    def gold_vs_perturbed(self, n: int = 200, seed: int = 0, step: float | None = None) -> dict[str, list[float]]:
        """Composite scores of `n` gold solutions in course format and of perturbed copies."""
        return gold_vs_perturbed(self.examples[:n], self.config, seed=seed, step=self.step if step is None else step)


# --------------------------------------------------------------------------------------------
# Reward hacking, weight presets, ablations, perturbations
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HackAttempt:
    name: str
    idea: str
    response: str


def _wrong(answer: str) -> str:
    try:
        return str(int(float(answer)) + 7)
    except ValueError:
        return answer + "1"


def hacking_attempts(example: Example) -> list[HackAttempt]:
    """Replies that try to earn reward without solving `example` honestly (part 05)."""
    a, q = example.answer, example.question
    honest = format_solution(example)
    steps = reasoning_lines(example.solution)
    plain = "\n".join(steps)
    end = int(a) if a.lstrip("-").isdigit() else 100
    taken = question_numbers(q)  # the chain's numbers come from nowhere: none is in the question
    step = next((k for k in (17, 19, 23, 29, 31, 37, 41, 43, 47, 53)
                 if not {str(k), *(str(end + k * j) for j in range(1, 7))} & taken), 59)
    chain = "\n".join(f"{end + step * (6 - i)} - {step} = {end + step * (5 - i)}" for i in range(6))
    candidates = sorted({str(x) for x in range(0, 200, 13)} | {a}, key=lambda t: (len(t), t))
    filler = " ".join(["We keep thinking carefully about every part of this problem."] * 180)
    return [
        HackAttempt("tag spam", "repeat the tag pattern to look extra formatted",
                    f"<reasoning></reasoning><answer>{a}</answer>" * 8),
        HackAttempt("step-marker spam", "write 'Step n:' and connectives with no content",
                    "<reasoning>\n" + "\n".join(f"Step {i}:" for i in range(1, 25))
                    + "\nSo. Therefore. Thus. Hence.\n</reasoning>\n" + f"<answer>{a}</answer>"),
        HackAttempt("answer stuffing", "list many numbers hoping one is right",
                    f"<reasoning>\nIt is one of these.\n</reasoning>\n<answer>{', '.join(candidates)}</answer>"),
        HackAttempt("empty reasoning", "skip the reasoning, keep the tags",
                    f"<reasoning>\n</reasoning>\n<answer>{a}</answer>"),
        HackAttempt("answer only", "the right answer with no trace at all", f"<answer>{a}</answer>"),
        HackAttempt("copy the question", "paste the question as reasoning",
                    f"<reasoning>\n{q}\n</reasoning>\n<answer>{a}</answer>"),
        HackAttempt("made-up arithmetic", "true sums that do not come from the question",
                    f"<reasoning>\n{chain}\nSo the answer is {a}.\n</reasoning>\n<answer>{a}</answer>"),
        HackAttempt("padding", "bury the answer in filler to look thorough",
                    f"<reasoning>\n{plain}\n{filler}\n</reasoning>\n<answer>{a}</answer>"),
        HackAttempt("endless output", "loop until the token limit, never closing the tags",
                    f"<reasoning>\n{plain}\n" + f"So the answer is {a}.\n" * 150),
        HackAttempt("answer outside the tags", "state the right answer in plain text",
                    f"{plain}\nThe answer is {a}."),
        HackAttempt("boxed, no tags", "LaTeX-style final answer instead of the tags",
                    f"{plain}\nFinal answer: \\boxed{{{a}}}"),
        HackAttempt("unclosed answer", "stop before closing the answer",
                    honest.replace(f"<answer>{a}</answer>", f"<answer>{a}")),
        HackAttempt("two answers", "give a wrong and a right answer block",
                    honest.replace(f"<answer>{a}</answer>", f"<answer>{_wrong(a)}</answer>\n<answer>{a}</answer>")),
        HackAttempt("tags inside the reasoning", "nest a fake answer block in the reasoning",
                    f"<reasoning>\n{plain}\n<answer>{a}</answer>\n</reasoning>\n<answer>{a}</answer>"),
        HackAttempt("chatter around the tags", "preamble and sign-off around a correct reply",
                    f"Sure! Here is my solution.\n{honest}\nHope this helps! Let me know if you need more."),
        HackAttempt("confident but wrong", "sound certain to look right",
                    honest.replace("</reasoning>", "I am absolutely certain, this is definitely correct.\n</reasoning>")
                    .replace(f"<answer>{a}</answer>", f"<answer>{_wrong(a)}</answer>")),
    ]


def catalogue_table(config: Any, example: Example, step: float | None = None,
                    weights: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Each hacking attempt's composite score next to the honest reply's (part 05).

    Rows: attempt, idea, hack (its total), honest (the honest total), margin, honest_wins,
    and the hack's components.
    """
    honest = composite_reward(format_solution(example), example.solution, weights=weights, step=step,
                              config=config, question=example.question).total
    rows = []
    for hack in hacking_attempts(example):
        b = composite_reward(hack.response, example.solution, weights=weights, step=step, config=config,
                             question=example.question)
        rows.append({"attempt": hack.name, "idea": hack.idea, "hack": b.total, "honest": honest,
                     "margin": honest - b.total, "honest_wins": honest > b.total,
                     **{k: b.components[k] for k in COMPONENTS}})
    return rows


def weight_presets(config: Any) -> dict[str, dict[str, float]]:
    """Named weightings for the tuning section: the config's static weights, its annealed start
    and end, and two hand-made presets (math-focused, explanation-focused)."""
    return {
        "config (static)": static_weights(config),
        "annealed, step 0": annealed_weights(config, 0),
        "annealed, last step": final_weights(config),
        "math-focused": {"format": 0.15, "coherence": 0.10, "correctness": 0.75, "efficiency": 0.0, "calibration": 0.0},
        "explanation-focused": {"format": 0.20, "coherence": 0.40, "correctness": 0.40, "efficiency": 0.0,
                                "calibration": 0.0},
    }


def ablation_responses(example: Example) -> dict[str, str]:
    """The reply kinds the ablation compares."""
    a, honest = example.answer, format_solution(example)
    wrong = honest.replace(f"<answer>{a}</answer>", f"<answer>{_wrong(a)}</answer>")
    return {
        "good answer + reasoning": honest,
        "correct, no trace": f"<answer>{a}</answer>",
        "wrong, with trace": wrong,
        "wrong, trace, over-confident": wrong.replace(
            "</reasoning>", "I am absolutely certain this is definitely right.\n</reasoning>"),
    }


def ablation_schemes(config: Any) -> dict[str, dict[str, float]]:
    """What each ablation column switches on: correctness only; + trace (the config's static
    weights); + confidence (annealed step 0: 0.15 of correctness paid as calibration); annealed
    (the last step's weights)."""
    return {
        "correctness only": {"correctness": 1.0},
        "+ trace": static_weights(config),
        "+ confidence": annealed_weights(config, 0),
        "annealed (end)": final_weights(config),
    }


def ablation_table(config: Any, example: Example) -> list[dict[str, Any]]:
    """Composite totals of each reply kind under each scheme: one row per reply kind (part 05)."""
    rows = []
    for kind, response in ablation_responses(example).items():
        row: dict[str, Any] = {"reply": kind}
        for scheme, weights in ablation_schemes(config).items():
            row[scheme] = composite_reward(response, example.solution, weights=weights, config=config,
                                           question=example.question).total
        rows.append(row)
    return rows


def _perturb_wrong(r: str, ex: Example, rng: random.Random) -> str:
    return r.replace(f"<answer>{ex.answer}</answer>", f"<answer>{_wrong(ex.answer)}</answer>")


def _perturb_no_tags(r: str, ex: Example, rng: random.Random) -> str:
    for tag in TAGS:
        r = r.replace(tag, "")
    return r.strip()


def _perturb_shuffle(r: str, ex: Example, rng: random.Random) -> str:
    lines = reasoning_lines(ex.solution)
    rng.shuffle(lines)
    return "<reasoning>\n" + "\n".join(lines) + f"\n</reasoning>\n<answer>{ex.answer}</answer>"


def _perturb_truncate(r: str, ex: Example, rng: random.Random) -> str:
    return r[: max(1, len(r) // 2)]


def _perturb_repeat(r: str, ex: Example, rng: random.Random) -> str:
    lines = reasoning_lines(ex.solution)
    return "<reasoning>\n" + "\n".join(l for l in lines for _ in range(3)) + f"\n</reasoning>\n<answer>{ex.answer}</answer>"


def _perturb_slip(r: str, ex: Example, rng: random.Random) -> str:
    lines = reasoning_lines(ex.solution)
    if lines:
        i = rng.randrange(len(lines))
        head, sep, tail = lines[i].rpartition("= ")
        if sep:
            tail = tail.lstrip("$")
            digits = len(tail) - len(tail.lstrip("0123456789"))
            if digits:
                lines[i] = f"{head}= {int(tail[:digits]) + 1}{tail[digits:]}"
    return "<reasoning>\n" + "\n".join(lines) + f"\n</reasoning>\n<answer>{ex.answer}</answer>"


PERTURBATIONS: dict[str, Callable[[str, Example, random.Random], str]] = {
    "wrong answer": _perturb_wrong,
    "tags removed": _perturb_no_tags,
    "steps shuffled": _perturb_shuffle,
    "cut in half": _perturb_truncate,
    "steps repeated 3×": _perturb_repeat,
    "one arithmetic slip": _perturb_slip,
}


def gold_vs_perturbed(examples: Sequence[Example], config: Any, seed: int = 0,
                      step: float | None = None) -> dict[str, list[float]]:
    """Composite totals of the gold solutions in course format ("gold") and of each perturbation."""
    rng = random.Random(seed)
    scores: dict[str, list[float]] = {"gold": [], **{name: [] for name in PERTURBATIONS}}
    for ex in examples:
        gold = format_solution(ex)
        scores["gold"].append(composite_reward(gold, ex.solution, step=step, config=config,
                                               question=ex.question).total)
        for name, perturb in PERTURBATIONS.items():
            scores[name].append(composite_reward(perturb(gold, ex, rng), ex.solution, step=step, config=config,
                                                 question=ex.question).total)
    return scores


# --------------------------------------------------------------------------------------------
# Tables and plots
# --------------------------------------------------------------------------------------------


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """Rows of dicts as an aligned text table (floats rounded, booleans as ✓/✗)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, bool):
            return "✓" if v else "✗"
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v)

    table = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for t in table:
        lines.append("  ".join(v.rjust(w) if v[:1].isdigit() or v[:1] == "-" else v.ljust(w) for v, w in zip(t, widths)))
    return "\n".join(lines)
