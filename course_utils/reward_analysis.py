"""Looking inside the reward (parts 03 and 05): sample replies, `diagnose` (what costs a reply
reward), `print_breakdown` (where its reward comes from), `summary` and `format_table`. Part
05's hacking catalogue, ablation and perturbations are cells of its notebook."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from course_utils.data import SYSTEM_PROMPT, Example, canonical_number, parse_number
from course_utils.rewards import (_ANSWER_NUMBER, COMPONENTS, MAX_ANSWER_NUMBERS, TAGS,
                                  VERBOSE_WORDS, RewardBreakdown, _Reply, answers_match,
                                  find_numbers, gold_value)

# A problem written for the course (GSM8K style) and replies of the kinds small models write.
SAMPLE_PROBLEM = Example(
    question="A baker makes 48 muffins in the morning and half as many in the afternoon. "
    "How many muffins does she make in total?",
    solution="In the afternoon she makes 48 / 2 = <<48/2=24>>24 muffins.\n"
    "In total she makes 48 + 24 = <<48+24=72>>72 muffins.\n#### 72",
    answer="72", difficulty="easy", source="course",
)
SAMPLE_REPLIES: dict[str, str] = {
    "clean": "<reasoning>\nIn the morning the baker makes 48 muffins.\nIn the afternoon she makes "
    "half as many, so 48 / 2 = 24 muffins.\nSo in total she makes 48 + 24 = 72 muffins.\n"
    "</reasoning>\n<answer>72</answer>",
    "markdown steps": "<reasoning>\n**Step 1:** Morning muffins: 48\n**Step 2:** Afternoon "
    "muffins: 48 ÷ 2 = 24\n**Step 3:** Total: 48 + 24 = 72\n</reasoning>\n"
    "<answer>72 muffins</answer>",
    "LaTeX and boxed": "<reasoning>\nThe afternoon batch is $\\frac{48}{2} = 24$ muffins, so the "
    "total is $48 + 24 = 72$.\n</reasoning>\n<answer>\\boxed{72}</answer>",
    "chatty preamble": "Sure! Let's solve this step by step.\n<reasoning>\nAfternoon: 48 / 2 = 24 "
    "muffins.\nTotal: 48 + 24 = 72 muffins.\n</reasoning>\n<answer>72</answer>\nI hope this helps!",
    "arithmetic slip": "<reasoning>\nIn the afternoon she makes 48 / 2 = 24 muffins.\nThen the "
    "total is 48 + 24 = 62 muffins.\n</reasoning>\n<answer>62</answer>",
    "misread the question": "<reasoning>\nHalf as many means twice as many, so 48 * 2 = 96 "
    "muffins in the afternoon.\nTotal: 48 + 96 = 144 muffins.\n</reasoning>\n<answer>144</answer>",
    "over-confident and wrong": "<reasoning>\nShe bakes 48 muffins twice, so 48 + 48 = 96.\nI am "
    "absolutely certain this is definitely right.\n</reasoning>\n<answer>96</answer>",
    "cut off at the token limit": "<reasoning>\nIn the morning she bakes 48 muffins. In the "
    "afternoon she bakes half as many, which is 48 / 2 = 24 muffins. Adding them, 48 + 24 =",
    "no tags": "The baker makes 48 / 2 = 24 muffins in the afternoon, so 48 + 24 = 72 in total. "
    "The answer is 72.",
    "echoes the instruction": SYSTEM_PROMPT + "\n" + SAMPLE_PROBLEM.question,
}


def _preview(text: str, n: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[: n - 1] + "…")


def _answer_findings(reply: _Reply, ground_truth: Any) -> list[str]:
    block, answer, found = reply.answer_block, reply.answer, []
    if block is not None:
        numbers = len(_ANSWER_NUMBER.findall(block[:2000]))
        if not block.strip():
            found.append("the answer block is empty")
        elif numbers == 0:
            found.append(f"the answer is not a number: {_preview(block)}")
        elif numbers > MAX_ANSWER_NUMBERS:
            found.append(f"the answer holds {numbers} numbers (answer stuffing?): give exactly one")
        elif parse_number(answer or "") is None:
            found.append(f"the answer is not one number: {_preview(block)}")
        elif canonical_number(block) is None:
            found.append(f"the answer holds more than a number; read as {answer} from "
                         f"{_preview(block)}")
    if ground_truth is None or answers_match(answer, ground_truth):
        return found
    gold = gold_value(ground_truth)
    if block is not None and parse_number(answer or "") is not None:
        found.append(f"the answer {answer} is wrong (gold {gold})")
    if gold in find_numbers(reply.text.replace(block or "\0", " ")[-20_000:]):
        found.append(f"the right answer {gold} appears outside the <answer> tags, which earns "
                     "nothing")
    if reply.overconfidence:
        found.append("over-confident wording with a wrong answer (costs the calibration share)")
    return found


def diagnose(response: Any, ground_truth: Any = None, question: str | None = None) -> list[str]:
    """What costs a reply reward, and why, most important first; [] when nothing does (part 05).
    Given the `question`, arithmetic on numbers from nowhere is found too."""
    reply = _Reply(response, question)
    s, t, found = reply.text, reply.trace, []
    if not s.strip():
        return ["the reply is empty"]
    for tag, count in zip(TAGS, reply.counts):
        if count > 1:
            found.append(f"{tag} appears {count} times (expected exactly once)")
        elif count == 0:
            why = ": the reply has no final answer block" if tag == "<answer>" else ""
            found.append(f"{tag} is missing{why}")
    if s.rfind("<answer>") > s.rfind("</answer>"):
        found.append("the last <answer> is never closed (was the reply cut off at the token "
                     "limit?)")
    if reply.counts == (1, 1, 1, 1) and reply.gaps is None:
        found.append("the tags are out of order: expected <reasoning>…</reasoning> then "
                     "<answer>…</answer>")
    places = ("before <reasoning>", "between </reasoning> and <answer>", "after </answer>")
    found += [f"text {place}: {_preview(gap)}"
              for place, gap in zip(places, reply.gaps or ()) if gap.strip()]
    if "<reasoning>" in s and not reply.reasoning.strip():
        found.append("the reasoning is empty")
    found += _answer_findings(reply, ground_truth)
    if t.units and t.quality < 0.5:
        found.append(f"only {t.steps} of {t.units} reasoning lines are distinct, substantive steps "
                     "(bare step markers or repeats earn nothing)")
    if t.invalid:
        found.append(f"{t.invalid} equation(s) in the reasoning are arithmetically wrong")
    if t.fabricated:
        found.append(f"{t.fabricated} step(s) compute with numbers that are neither in the "
                     "question nor in earlier steps (made-up arithmetic earns nothing)")
    if reply.answer is not None and t.units and not t.leads:
        found.append("the reasoning never reaches the final answer")
    if reply.repeated_share > 0.2:
        found.append(f"{reply.repeated_share:.0%} of the lines repeat earlier ones "
                     "(verbosity penalty)")
    if reply.words > VERBOSE_WORDS[0]:
        found.append(f"the reply is long: {reply.words:,} words (the verbosity penalty starts at "
                     f"{VERBOSE_WORDS[0]})")
    return found


def report(response: Any, ground_truth: Any = None, question: str | None = None) -> str:
    """`diagnose`'s findings as text, one per line, or 'no problems found' (part 05)."""
    findings = diagnose(response, ground_truth, question)
    return "\n".join(f"- {f}" for f in findings) if findings else "no problems found"


def summary(breakdowns: Sequence[RewardBreakdown]) -> dict[str, float]:
    """Mean total and components, accuracy and strict-format rate over scored replies (part 05)."""
    n = max(1, len(breakdowns))
    return {"n": float(len(breakdowns)), "total": sum(b.total for b in breakdowns) / n,
            "accuracy": sum(b.correct for b in breakdowns) / n,
            "strict_format": sum(b.components["format"] == 1.0 for b in breakdowns) / n,
            **{k: sum(b.components[k] for b in breakdowns) / n for k in COMPONENTS}}


def print_breakdown(b: RewardBreakdown, findings: Sequence[str] | None = None) -> None:
    """Print a reply's components, weights, contributions, penalty and total as a small table,
    and `diagnose`'s `findings` when given (parts 03 and 05)."""
    print(f"{'component':<13}{'score':>7}{'weight':>8}{'adds':>8}")
    for k in COMPONENTS:
        print(f"{k:<13}{b.components[k]:>7.3f}{b.weights[k]:>8.3f}{b.contributions[k]:>8.3f}")
    print(f"{'verbosity':<28}{-b.penalties['verbosity']:>8.3f}\n{'total':<28}{b.total:>8.3f}")
    print(f"answer {b.answer!r} is {'right' if b.correct else 'wrong'}; "
          f"difficulty {b.difficulty or 'unknown'}")
    if findings is not None:
        print("findings:", "".join(f"\n  - {f}" for f in findings) or "none")


def wrong_answer(answer: str) -> str:
    """A different answer: the number + 7, else the text with a 1 appended."""
    try:
        return str(int(float(answer)) + 7)
    except ValueError:
        return answer + "1"


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                 digits: int = 3) -> str:
    """Rows of dicts as an aligned text table (floats rounded, booleans as ✓/✗)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, bool):
            return "✓" if v else "✗"
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    table = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    for t in table:
        lines.append("  ".join(v.rjust(w) if v[:1].isdigit() or v[:1] == "-" else v.ljust(w)
                               for v, w in zip(t, widths)))
    return "\n".join(lines)
