"""course_utils.reward_analysis: debugger, analyser, hacking catalogue, ablations, plots (part 05)."""

import statistics

import pytest

from course_utils import data
from course_utils.config import TrainingConfig
from course_utils.data import build_prompt, format_solution, load_gsm8k, read_gsm8k_folder
from course_utils.reward_analysis import (
    PERTURBATIONS,
    SAMPLE_PROBLEM,
    SAMPLE_REPLIES,
    RewardAnalyzer,
    RewardDebugger,
    ablation_schemes,
    ablation_table,
    catalogue_table,
    format_table,
    gold_vs_perturbed,
    hacking_attempts,
    question_from_prompt,
    weight_presets,
)
from course_utils.plots import plot_annealing, plot_catalogue, plot_reward_distributions
from course_utils.rewards import COMPONENTS, composite_reward

CONFIG = TrainingConfig()
GSM8K = data.SHARED_GSM8K


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
    findings = RewardDebugger(CONFIG).diagnose_response(reply, "72")
    text = "\n".join(findings)
    for piece in expected:
        assert piece in text, (piece, findings)


def test_debugger_flags_made_up_arithmetic_given_the_question():
    made_up = "<reasoning>\n140 - 17 = 123\n123 - 17 = 106\n</reasoning>\n<answer>106</answer>"
    debugger = RewardDebugger(CONFIG)
    assert "made-up arithmetic" in debugger.report(made_up, "106", question=SAMPLE_PROBLEM.question)
    assert "made-up" not in debugger.report(made_up, "106")  # without the question it cannot tell
    assert debugger.diagnose_response(SAMPLE_REPLIES["clean"], "72", SAMPLE_PROBLEM.question) == []


def test_debugger_clean_reply_has_no_findings():
    debugger = RewardDebugger(CONFIG)
    assert debugger.diagnose_response(SAMPLE_REPLIES["clean"], "72") == []
    assert debugger.report(SAMPLE_REPLIES["clean"], "72") == "no problems found"
    assert debugger.report("", "72").startswith("- ")
    assert debugger.diagnose_response(format_solution(SAMPLE_PROBLEM)) == []  # without a gold too


def test_debugger_on_the_sample_replies():
    debugger = RewardDebugger(CONFIG)
    found = {name: "\n".join(debugger.diagnose_response(reply, "72")) for name, reply in SAMPLE_REPLIES.items()}
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

def test_analyzer_finds_the_problem_from_the_prompt(capsys):
    problems = load_gsm8k("test", source="synthetic", limit=20, verbose=False)
    analyzer = RewardAnalyzer(CONFIG, data_loader=lambda: problems)
    ex = problems[3]
    prompt = build_prompt(ex.question)
    assert question_from_prompt(prompt) == ex.question
    result = analyzer.analyze_response(format_solution(ex), prompt=prompt)
    assert result.example == ex and result.breakdown.correct and result.breakdown.difficulty == ex.difficulty
    assert result.total == composite_reward(format_solution(ex), ex.solution, config=CONFIG,
                                            difficulty=ex.difficulty, question=ex.question).total
    analyzer.print_breakdown(result)
    out = capsys.readouterr().out
    for name in COMPONENTS + ("verbosity", "total", "findings: none"):
        assert name in out
    with pytest.raises(ValueError, match="give ground_truth"):
        analyzer.analyze_response("x", prompt="a question nobody asked")


def test_analyzer_batch_and_summary():
    analyzer = RewardAnalyzer(CONFIG, data_loader=[SAMPLE_PROBLEM], step=0)
    replies = list(SAMPLE_REPLIES.values())
    results = analyzer.analyze_batch(replies, ["72"] * len(replies))
    summary = analyzer.summary(results)
    assert summary["n"] == len(replies)
    right = sum(r.breakdown.correct for r in results)
    assert summary["accuracy"] == pytest.approx(right / len(replies)) and 0 < right < len(replies)
    assert all(r.breakdown.weights["calibration"] == pytest.approx(0.15) for r in results)  # step 0: annealed


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
    names = {h.name for h in hacking_attempts(SAMPLE_PROBLEM)}
    assert {"tag spam", "step-marker spam", "answer stuffing", "empty reasoning", "copy the question",
            "endless output", "answer outside the tags"} <= names
    assert len(names) == len(hacking_attempts(SAMPLE_PROBLEM))


def test_honest_answer_wins_every_row(examples):
    """For every problem, at the start, middle and end of training and with static weights,
    the honest course-format solution outscores every hacking attempt."""
    losses = []
    for ex in examples:
        for step in (None, 0, (CONFIG.max_steps - 1) // 2, CONFIG.max_steps - 1):
            for row in catalogue_table(CONFIG, ex, step=step):
                if not row["honest_wins"]:
                    losses.append((ex.question[:50], step, row["attempt"], round(row["margin"], 3)))
    assert losses == []


def test_honest_answer_wins_under_every_weight_preset(examples):
    losses = []
    for name, weights in weight_presets(CONFIG).items():
        assert sum(weights.values()) == pytest.approx(1.0)
        for ex in examples[:40]:
            losses += [(name, ex.question[:40], r["attempt"]) for r in catalogue_table(CONFIG, ex, weights=weights)
                       if not r["honest_wins"]]
    assert losses == []


# --- ablations and presets ------------------------------------------------------------------

def test_ablation_table_shows_what_each_term_does():
    rows = {r["reply"]: r for r in ablation_table(CONFIG, SAMPLE_PROBLEM)}
    assert list(next(iter(rows.values())))[1:] == list(ablation_schemes(CONFIG))
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
    for scheme in ablation_schemes(CONFIG):
        assert good[scheme] == max(r[scheme] for r in rows.values())


def test_weight_presets_differ_as_named():
    presets = weight_presets(CONFIG)
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
    scores = gold_vs_perturbed(examples[:120], CONFIG, seed=1)
    assert set(scores) == {"gold", *PERTURBATIONS}
    assert all(len(v) == 120 for v in scores.values())
    gold = statistics.mean(scores["gold"])
    assert gold > 0.85
    for name in PERTURBATIONS:
        assert statistics.mean(scores[name]) < gold - 0.01, name
    for name in ("wrong answer", "tags removed", "cut in half"):  # the answer is lost: a large drop
        assert statistics.mean(scores[name]) < gold - 0.3, name
    assert scores == gold_vs_perturbed(examples[:120], CONFIG, seed=1)  # seeded


def test_analyzer_gold_vs_perturbed_uses_its_data():
    analyzer = RewardAnalyzer(CONFIG, data_loader=lambda: load_gsm8k("test", source="synthetic", limit=10, verbose=False))
    scores = analyzer.gold_vs_perturbed(n=5)
    assert len(scores["gold"]) == 5


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
        plot_reward_distributions(gold_vs_perturbed([SAMPLE_PROBLEM], CONFIG), tmp_path / "dist.png"),
        plot_catalogue(catalogue_table(CONFIG, SAMPLE_PROBLEM), tmp_path / "cat.png"),
        plot_reward_distributions({"gold": []}, tmp_path / "empty.png"),
    ]
    for path in paths:
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.rglob("*.tmp.png"))
