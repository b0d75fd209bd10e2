"""course_utils.reward_analysis and part 05's cells: diagnose, print_breakdown, summary, the hacking
catalogue, weight presets, the ablation, gold vs perturbed solutions, plots (part 05)."""

import statistics
from pathlib import Path

import jupytext
import pytest

from course_utils import data
from course_utils.config import TrainingConfig
from course_utils.data import format_solution, load_gsm8k, read_gsm8k_folder
from course_utils.plots import plot_annealing, plot_catalogue, plot_reward_distributions
from course_utils.reward_analysis import (SAMPLE_PROBLEM, SAMPLE_REPLIES, diagnose, format_table,
                                          print_breakdown, report, summary)
from course_utils.rewards import COMPONENTS, composite_reward

CONFIG = TrainingConfig()
GSM8K = data.SHARED_GSM8K
PART_05 = jupytext.read(Path(__file__).resolve().parents[1] / "notebooks" / "05_reward_testing.py")
PERTURBATIONS = ["wrong answer", "tags removed", "steps shuffled", "cut in half", "steps repeated 3×",
                 "one arithmetic slip"]


def part_05(**names):
    """The namespace part 05's tagged cells leave (the catalogue, presets, ablation, perturbed
    scores), run in the notebook's order with `names` (config, example, problems, SEED, STEP)."""
    namespace = {"config": CONFIG, "example": SAMPLE_PROBLEM, "problems": [], "SEED": 0, "STEP": None,
                 **names}
    for cell in PART_05.cells:
        if cell.cell_type == "code" and set(cell.metadata.get("tags", ())) - {"parameters"}:
            exec(compile(cell.source, f"05_reward_testing[{cell.metadata['tags'][0]}]", "exec"), namespace)
    return namespace


CELLS = part_05()


@pytest.fixture(scope="module")
def examples():
    """Problems to test the catalogue on: the course's sample, generated ones of each
    difficulty, and real GSM8K train and test problems when a copy is present."""
    out = [SAMPLE_PROBLEM] + load_gsm8k("test", source="synthetic", limit=60, verbose=False)
    if (GSM8K / "test.jsonl").is_file():
        out += read_gsm8k_folder(GSM8K, "test")[:80] + read_gsm8k_folder(GSM8K, "train")[:80]
    else:  # a clone without ../shared: more generated problems, so every test has its 120+
        out += load_gsm8k("train", source="synthetic", limit=160, verbose=False)
    return out


# --- the debugger ---------------------------------------------------------------------------

@pytest.mark.parametrize("reply, expected", [
    ("", ["the reply is empty"]),
    ("The answer is 72.", ["<answer> is missing", "the right answer 72 appears outside the <answer> tags"]),
    ("<reasoning>r</reasoning><answer>72", ["</answer> is missing", "never closed"]),
    ("Sure!\n<reasoning>\n48 / 2 = 24 and 48 + 24 = 72\n</reasoning>\n<answer>72</answer>\nBye!",
     ["text before <reasoning>: 'Sure!'", "text after </answer>: 'Bye!'"]),
    ("<reasoning></reasoning><answer>72</answer>", ["the reasoning is empty"]),
    ("<reasoning>r</reasoning><answer></answer>", ["the answer block is empty"]),
    ("<reasoning>r</reasoning><answer>seventy-two</answer>", ["the answer is not a number"]),
    ("<reasoning>r</reasoning><answer>70, 71, 72, 73</answer>", ["4 numbers (answer stuffing?)"]),
    ("<reasoning>r</reasoning><answer>72 muffins</answer>", ["read as 72"]),
    ("<reasoning>r</reasoning><answer>\\boxed{71}</answer>", ["the answer 71 is wrong"]),
    ("<reasoning>r</reasoning><answer>71</answer>", ["the answer 71 is wrong (gold 72)"]),
    ("<answer>72</answer><reasoning>r</reasoning>", ["out of order"]),
    ("<reasoning>r</reasoning><answer>7</answer>" * 3, ["<answer> appears 3 times"]),
    ("<reasoning>\n48 + 24 = 62\n</reasoning><answer>62</answer>",
     ["1 equation(s) in the reasoning are arithmetically wrong"]),
    ("<reasoning>\nStep 1:\nStep 2:\nStep 3:\n</reasoning><answer>72</answer>", ["0 of 3 reasoning lines"]),
    ("<reasoning>\n" + "48 + 24 = 72\n" * 20 + "</reasoning><answer>72</answer>", ["repeat earlier ones"]),
    ("<reasoning>\nI am absolutely certain.\n</reasoning><answer>70</answer>", ["over-confident wording"]),
])
def test_debugger_findings(reply, expected):
    findings = diagnose(reply, "72")
    text = "\n".join(findings)
    for piece in expected:
        assert piece in text, (piece, findings)


def test_debugger_flags_made_up_arithmetic_given_the_question():
    made_up = "<reasoning>\n140 - 17 = 123\n123 - 17 = 106\n</reasoning>\n<answer>106</answer>"
    assert "made-up arithmetic" in report(made_up, "106", question=SAMPLE_PROBLEM.question)
    assert "made-up" not in report(made_up, "106")  # without the question it cannot tell
    assert diagnose(SAMPLE_REPLIES["clean"], "72", SAMPLE_PROBLEM.question) == []


def test_debugger_clean_reply_has_no_findings():
    assert diagnose(SAMPLE_REPLIES["clean"], "72") == []
    assert report(SAMPLE_REPLIES["clean"], "72") == "no problems found"
    assert report("", "72").startswith("- ")
    assert diagnose(format_solution(SAMPLE_PROBLEM)) == []  # without a gold too


def test_debugger_on_the_sample_replies():
    found = {name: "\n".join(diagnose(reply, "72")) for name, reply in SAMPLE_REPLIES.items()}
    assert "text before <reasoning>" in found["chatty preamble"]
    assert "arithmetically wrong" in found["arithmetic slip"]
    assert "is wrong (gold 72)" in found["misread the question"]
    assert "never closed" not in found["cut off at the token limit"]  # no <answer> was even opened
    assert "<answer> is missing" in found["cut off at the token limit"]
    assert "appears outside" in found["no tags"]
    assert "over-confident" in found["over-confident and wrong"]
    assert "more than a number" not in found["LaTeX and boxed"]  # \\boxed{72} is one number
    assert "is wrong" not in found["echoes the instruction"]  # its "answer" is not a number at all


# --- the analyser ---------------------------------------------------------------------------

def test_print_breakdown(capsys):
    b = composite_reward(format_solution(SAMPLE_PROBLEM), SAMPLE_PROBLEM.solution, config=CONFIG)
    print_breakdown(b, diagnose(format_solution(SAMPLE_PROBLEM), SAMPLE_PROBLEM.solution))
    out = capsys.readouterr().out
    for name in COMPONENTS + ("verbosity", "total", "answer '72' is right", "findings: none"):
        assert name in out
    print_breakdown(b, ["the answer is wrong"])
    assert "findings: \n  - the answer is wrong" in capsys.readouterr().out


def test_summary():
    replies = list(SAMPLE_REPLIES.values())
    results = [composite_reward(reply, "72", step=0, config=CONFIG) for reply in replies]
    means = summary(results)
    assert means["n"] == len(replies)
    right = sum(b.correct for b in results)
    assert means["accuracy"] == pytest.approx(right / len(replies)) and 0 < right < len(replies)
    assert means["strict_format"] == pytest.approx(sum(b.components["format"] == 1 for b in results) / len(replies))
    assert means["total"] == pytest.approx(sum(b.total for b in results) / len(replies))


def test_sample_replies_rank_as_a_reader_expects():
    scores = {name: composite_reward(r, SAMPLE_PROBLEM.solution, config=CONFIG, question=SAMPLE_PROBLEM.question).total
              for name, r in SAMPLE_REPLIES.items()}
    right = ["clean", "markdown steps", "LaTeX and boxed", "chatty preamble"]
    wrong = ["arithmetic slip", "misread the question", "over-confident and wrong", "cut off at the token limit",
             "no tags", "echoes the instruction"]
    assert min(scores[n] for n in right) > max(scores[n] for n in wrong)
    assert scores["clean"] == max(scores.values())


# --- the hacking catalogue: the honest answer wins every row -----------------------------------

def test_catalogue_covers_the_attempts_the_course_names():
    names = [row["attempt"] for row in CELLS["catalogue_table"](CONFIG, SAMPLE_PROBLEM)]
    assert {"tag spam", "step-marker spam", "answer stuffing", "empty reasoning", "copy the question",
            "made-up arithmetic", "endless output", "answer outside the tags"} <= set(names)
    assert len(names) == len(set(names)) == 16


def test_honest_answer_wins_every_row(examples):
    """For every problem, at the start, middle and end of training and with static weights,
    the honest course-format solution outscores every hacking attempt."""
    losses = []
    for ex in examples:
        for step in (None, 0, (CONFIG.max_steps - 1) // 2, CONFIG.max_steps - 1):
            for row in CELLS["catalogue_table"](CONFIG, ex, step=step):
                if not row["honest_wins"]:
                    losses.append((ex.question[:50], step, row["attempt"], round(row["margin"], 3)))
    assert losses == []


def test_honest_answer_wins_under_every_weight_preset(examples):
    losses = []
    for name, weights in CELLS["presets"].items():
        assert sum(weights.values()) == pytest.approx(1.0)
        for ex in examples[:40]:
            losses += [(name, ex.question[:40], r["attempt"])
                       for r in CELLS["catalogue_table"](CONFIG, ex, weights=weights) if not r["honest_wins"]]
    assert losses == []


# --- ablations and presets ------------------------------------------------------------------

def test_ablation_table_shows_what_each_term_does():
    rows = {r["reply"]: r for r in CELLS["ablation"]}
    assert list(next(iter(rows.values())))[1:] == list(CELLS["schemes"])
    good, bare = rows["good answer + reasoning"], rows["correct, no trace"]
    wrong, sure = rows["wrong, with trace"], rows["wrong, trace, over-confident"]
    # correctness only: a trace is worth nothing and a wrong answer scores 0
    assert wrong["correctness only"] == sure["correctness only"] == 0.0
    assert bare["correctness only"] == pytest.approx(0.7)
    # + trace: format and coherence pay for the wrong-with-trace reply
    assert wrong["+ trace"] > 0.3
    # + confidence: over-confidence on a wrong answer now costs
    assert wrong["+ confidence"] > sure["+ confidence"]
    assert wrong["+ trace"] == pytest.approx(sure["+ trace"])
    # annealed: correctness dominates at the end, a bare right answer beats a traced wrong one
    assert bare["annealed (end)"] > wrong["annealed (end)"]
    assert bare["annealed (end)"] > bare["+ confidence"]
    # the good reply wins every column
    for scheme in CELLS["schemes"]:
        assert good[scheme] == max(r[scheme] for r in rows.values())


def test_weight_presets_differ_as_named():
    presets = CELLS["presets"]
    math_w, expl_w = presets["math-focused"], presets["explanation-focused"]
    assert math_w["correctness"] > expl_w["correctness"] and expl_w["coherence"] > math_w["coherence"]
    bare = "<answer>72</answer>"
    explained_but_wrong = SAMPLE_REPLIES["arithmetic slip"]
    g = SAMPLE_PROBLEM.solution
    assert composite_reward(bare, g, weights=math_w).total > composite_reward(bare, g, weights=expl_w).total
    assert (composite_reward(explained_but_wrong, g, weights=expl_w).total
            > composite_reward(explained_but_wrong, g, weights=math_w).total)


# --- distributions ---------------------------------------------------------------------------

def test_gold_scores_above_every_perturbation(examples):
    scores = part_05(problems=examples[:120], SEED=1)["scores"]
    assert set(scores) == {"gold", *PERTURBATIONS}
    assert all(len(v) == 120 for v in scores.values())
    gold = statistics.mean(scores["gold"])
    assert gold > 0.85
    for name in PERTURBATIONS:
        assert statistics.mean(scores[name]) < gold - 0.01, name
    for name in ("wrong answer", "tags removed", "cut in half"):  # the answer is lost: a large drop
        assert statistics.mean(scores[name]) < gold - 0.3, name
    assert scores == part_05(problems=examples[:120], SEED=1)["scores"]  # seeded


# --- tables and plots ------------------------------------------------------------------------

def test_format_table():
    text = format_table([{"a": "x", "b": 0.12345, "c": True}, {"a": "longer", "b": 1.0, "c": False}])
    lines = text.splitlines()
    assert lines[0].split() == ["a", "b", "c"] and "0.123" in lines[2] and "✓" in lines[2] and "✗" in lines[3]
    assert format_table([]) == "(no rows)"


def test_plots_are_written(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    paths = [
        plot_annealing(CONFIG, tmp_path / "a" / "annealing.png"),
        plot_reward_distributions(part_05(problems=[SAMPLE_PROBLEM])["scores"], tmp_path / "dist.png"),
        plot_catalogue(CELLS["catalogue_table"](CONFIG, SAMPLE_PROBLEM), tmp_path / "cat.png"),
        plot_reward_distributions({"gold": []}, tmp_path / "empty.png"),
    ]
    for path in paths:
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.rglob("*.tmp.png"))
