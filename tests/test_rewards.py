"""course_utils.rewards: each component, the peer bugs, weights, the composite, Tunix adapters (part 03)."""

import dataclasses
import math
import time

import numpy as np
import pytest

from course_utils import data
from course_utils.config import TrainingConfig
from course_utils.data import Example, format_solution, read_gsm8k_folder
from course_utils.rewards import (
    COMPONENTS,
    CONSTANTS,
    annealed_weights,
    final_weights,
    calibration_reward,
    check_weights,
    coherence_reward,
    composite_reward,
    correctness_reward,
    efficiency_reward,
    extract_answer,
    format_reward,
    gold_value,
    is_correct,
    make_reward_fns,
    normalize_answer,
    question_numbers,
    reward_weights,
    score_batch,
    static_weights,
    verbosity,
)

QUESTION = "A baker makes 48 muffins in the morning and half as many in the afternoon. How many in total?"
SOLUTION = "In the afternoon she makes 48 / 2 = <<48/2=24>>24.\nIn total 48 + 24 = <<48+24=72>>72.\n#### 72"
GOOD = ("<reasoning>\nIn the morning she makes 48 muffins.\nIn the afternoon she makes 48 / 2 = 24 muffins.\n"
        "So in total she makes 48 + 24 = 72 muffins.\n</reasoning>\n<answer>72</answer>")
CONFIG = TrainingConfig()


# --- the three bugs that travel between public GRPO notebooks -----------------------------

def test_peer_bug_1_multiline_anchors_do_not_make_chatter_exact_format():
    """A MULTILINE `^<reasoning>…</answer>$` matches inside a reply with a preamble and trailing
    chatter and calls it exact format. Here chatter costs credit and is never 1.0."""
    chatty = "Sure, here is my answer:\n" + GOOD + "\nHope this helps!"
    assert format_reward(GOOD) == 1.0
    assert format_reward(chatty) == pytest.approx(0.8)
    assert format_reward("Sure:\n" + GOOD) == pytest.approx(0.9)
    assert format_reward(GOOD + "\nBye") == pytest.approx(0.9)


@pytest.mark.parametrize("answer, expected", [
    ("-5", "-5"),  # first-run-of-digits extraction returns 5
    ("1,234", "1234"),  # ... returns 1
    ("3 apples, 12 in total", "12"),  # ... returns 3
    ("The total is $1,234.50.", "1234.5"),
    ("-1,000", "-1000"),
])
def test_peer_bug_2_answer_extraction_takes_the_whole_last_number(answer, expected):
    assert extract_answer(f"<reasoning>\nwork\n</reasoning>\n<answer>{answer}</answer>") == expected


def test_peer_bug_2_is_correct_with_those_answers():
    assert is_correct("<reasoning>r</reasoning><answer>-5</answer>", "-5")
    assert not is_correct("<reasoning>r</reasoning><answer>-5</answer>", "5")
    assert is_correct("<reasoning>r</reasoning><answer>1,234</answer>", "1234")
    assert not is_correct("<reasoning>r</reasoning><answer>1,234</answer>", "1")
    assert is_correct("<reasoning>r</reasoning><answer>3 apples, 12 in total</answer>", "12")
    assert not is_correct("<reasoning>r</reasoning><answer>3 apples, 12 in total</answer>", "3")


def test_peer_bug_3_multiline_reasoning_is_fine():
    """Without DOTALL, `<reasoning>.*</reasoning>` cannot span lines, so any real trace scored 0."""
    many_lines = "<reasoning>\n" + "\n".join(f"line {i}" for i in range(30)) + "\n</reasoning>\n<answer>7</answer>"
    assert format_reward(many_lines) == 1.0
    assert format_reward(GOOD) == 1.0 and GOOD.count("\n") > 3


# --- format -------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, score", [
    ("", 0.0),
    ("just text", 0.0),
    ("<answer>7</answer>", 0.2),
    ("<reasoning>r</reasoning>", 0.2),
    ("<reasoning>r</reasoning><answer>7</answer>", 1.0),
    ("  \n<reasoning>r</reasoning>\n\n<answer>7</answer>\n  ", 1.0),
    ("<reasoning></reasoning><answer>7</answer>", 0.9),  # empty reasoning
    ("<reasoning>r</reasoning><answer> </answer>", 0.9),  # empty answer
    ("<answer>7</answer><reasoning>r</reasoning>", 0.4),  # wrong order
    ("<reasoning>r</reasoning> and then <answer>7</answer>", 0.9),  # text between
    ("<reasoning>r</reasoning><answer>7", 0.3),  # unclosed answer
    ("<reasoning>r<answer>7</answer>", 0.3),
    ("<reasoning>r</reasoning><answer>7</answer>" * 2, 0.0),  # tag spam
    ("<reasoning>r</reasoning><answer>7</answer><answer>8</answer>", 0.2),
    ("<REASONING>r</REASONING><ANSWER>7</ANSWER>", 0.0),  # tags are case-sensitive
    ("<reasoning>r</reasoning><answer>7</answer><end_of_turn>", 1.0),  # Gemma's end marker is cut
])
def test_format_reward(reply, score):
    assert format_reward(reply) == pytest.approx(score)


# --- answers ------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, expected", [
    ("no tags at all, 72", None),
    ("<answer>72", None),  # never closed
    ("<answer></answer>", ""),
    ("<answer> 72 </answer>", "72"),
    ("<answer>$72.00</answer>", "72"),
    ("<answer>72 muffins</answer>", "72"),
    ("<answer>50%</answer>", "50"),
    ("<answer>\\boxed{72}</answer>", "72"),
    ("<answer>\\frac{3}{4}</answer>", "0.75"),
    ("<answer>\\frac{3}{4} cup</answer>", "0.75"),
    ("<answer>1/3</answer>", "1/3"),
    ("<answer>x = -5</answer>", "-5"),
    ("<answer>−5</answer>", "-5"),
    ("<answer>eighteen</answer>", "eighteen"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),  # the last block counts
    ("<answer>1, 2, 3, 4, 5</answer>", "1, 2, 3, 4, 5"),  # answer stuffing: no number
    ("<answer><answer>9</answer></answer>", "9"),
    (None, None),
    (b"<answer>72</answer>", "72"),
    (72, None),
])
def test_extract_answer(reply, expected):
    assert extract_answer(reply) == expected


@pytest.mark.parametrize("reply, gold, right", [
    (GOOD, "72", True),
    (GOOD, 72, True),
    (GOOD, 72.0, True),
    (GOOD, SOLUTION, True),  # a full GSM8K solution as ground truth
    (GOOD, "$72", True),
    (GOOD, "73", False),
    ("<answer>72.0</answer>", "72", True),
    ("<answer>0.5</answer>", "1/2", True),
    ("<answer>\\frac{1}{2}</answer>", "0.5", True),
    ("<answer>1,080</answer>", "steps\n#### 1,080", True),
    ("<answer>\\sqrt{324}</answer>", "18", False),  # math expressions are not evaluated
    ("<answer>\\sqrt{324}</answer>", "\\sqrt{324}", True),  # ... but compared as text
    ("<answer>2^{3}</answer>", "8", False),
    ("<answer>eighteen</answer>", "18", False),
    ("The answer is 72.", "72", False),  # outside the tags
    ("<answer>1, 72, 3, 4</answer>", "72", False),  # stuffing
])
def test_is_correct(reply, gold, right):
    assert is_correct(reply, gold) is right


@pytest.mark.parametrize("answer", ["9^{9^{9}}", "10^{10^{10}}", "2^{100000}", "1000!", "9^{999}"])
def test_power_towers_are_text_not_numbers(answer):
    start = time.perf_counter()
    assert not is_correct(f"<answer>{answer}</answer>", "72")
    assert time.perf_counter() - start < 0.5


def test_gold_value_and_bad_gold():
    assert gold_value(SOLUTION) == "72" and gold_value(b"1,000") == "1000" and gold_value(12.0) == "12"
    for bad in (None, "", "   ", True):
        with pytest.raises(ValueError):
            is_correct(GOOD, bad)


def test_normalize_answer():
    assert normalize_answer("  The answer is 18 dollars. ") == "18"
    assert normalize_answer("5 + 7 = 12") == "12"
    assert normalize_answer("a b c") == "a b c"
    assert len(normalize_answer("1 " * 10_000)) > 100  # long: text, not a number


# --- coherence, correctness, efficiency, calibration ----------------------------------------

def test_coherence_rewards_real_steps_not_markers_or_repeats():
    good = coherence_reward(GOOD, "easy", QUESTION)
    markers = "<reasoning>\n" + "\n".join(f"Step {i}:" for i in range(1, 30)) + "\n</reasoning><answer>72</answer>"
    repeated = "<reasoning>\n" + "48 / 2 = 24 so 48 + 24 = 72.\n" * 30 + "</reasoning><answer>72</answer>"
    connectives = "<reasoning>\nso then therefore thus hence because since\n</reasoning><answer>72</answer>"
    assert good > 0.8
    assert coherence_reward(markers) < 0.05
    assert coherence_reward(repeated) < 0.1
    assert coherence_reward(connectives) < 0.25
    assert coherence_reward("") == 0.0 and coherence_reward("<reasoning></reasoning>") == 0.0


def test_coherence_checks_the_arithmetic_and_where_it_leads():
    right = "<reasoning>\nAfternoon: 48 / 2 = 24 muffins.\nSo the total is 48 + 24 = 72.\n</reasoning><answer>72</answer>"
    slip = right.replace("48 + 24 = 72", "48 + 24 = 62")
    nowhere = right.replace("<answer>72</answer>", "<answer>50</answer>")
    assert coherence_reward(right, "easy") > coherence_reward(slip, "easy")
    assert coherence_reward(right, "easy") > coherence_reward(nowhere, "easy")


def test_coherence_grounds_equations_in_the_question():
    made_up = ("<reasoning>\n140 - 17 = 123\n123 - 17 = 106\n106 - 17 = 89\n89 - 17 = 72\nSo it is 72.\n"
               "</reasoning><answer>72</answer>")
    # Without the question the true sums count; with it they are made up and earn nothing.
    assert coherence_reward(made_up, "easy") > coherence_reward(made_up, "easy", QUESTION) + 0.3
    assert coherence_reward(GOOD, "easy", QUESTION) > coherence_reward(made_up, "easy", QUESTION) + 0.3
    numbers = question_numbers("She has twenty apples and 15% of 3,000 pears.")
    assert {"20", "15", "0.15", "3000", "30"} <= numbers and {"2", "100"} <= CONSTANTS - numbers


def test_coherence_is_difficulty_aware():
    two_steps = GOOD
    assert coherence_reward(two_steps, "easy", QUESTION) > coherence_reward(two_steps, "hard", QUESTION)


def test_coherence_reads_unit_laden_and_percent_arithmetic():
    text = ("<reasoning>\nThe fabric is 16 feet * 12 feet = 192 square feet.\nHe pays 40 students x $6/day = $240.\n"
            "Food is 15% * $1000 = $150.\n100% - 40% = 60% of them passed.\nHalf of it: 1/2 * 1/2 = 1/4\n"
            "</reasoning><answer>150</answer>")
    from course_utils.rewards import _Reply

    trace = _Reply(text).trace
    assert (trace.valid, trace.invalid) == (5, 0)
    algebra = "<reasoning>\nS + 2S + 4S = 7S = 847\nM + 4 + 2 = 8 hours\n</reasoning><answer>121</answer>"
    assert _Reply(algebra).trace.invalid == 0  # algebra is not checked as arithmetic


def test_correctness_wrong_never_beats_right():
    wrong = GOOD.replace("<answer>72</answer>", "<answer>71</answer>")
    bare = "<answer>72</answer>"
    assert correctness_reward(wrong, "72") == 0.0
    assert correctness_reward(bare, "72") == pytest.approx(0.7)
    assert 0.9 < correctness_reward(GOOD, "72", "easy", QUESTION) <= 1.0
    assert correctness_reward(GOOD, SOLUTION) >= correctness_reward(bare, SOLUTION) >= 0.7


def test_efficiency_reward():
    assert efficiency_reward(GOOD) == 1.0
    assert efficiency_reward("<answer>72</answer>") == pytest.approx(1 / 20)
    assert efficiency_reward("") == 0.0
    assert efficiency_reward("word " * 550) == pytest.approx(0.6)
    assert efficiency_reward("word " * 2000) == 0.0


def test_calibration_and_verbosity():
    wrong = GOOD.replace("<answer>72</answer>", "<answer>71</answer>")
    sure = wrong.replace("</reasoning>", "I am absolutely certain.\n</reasoning>")
    very_sure = wrong.replace("</reasoning>", "I am absolutely certain, definitely.\n</reasoning>")
    assert calibration_reward(wrong, "72") == 1.0
    assert calibration_reward(sure, "72") == 0.5
    assert calibration_reward(very_sure, "72") == 0.0
    assert calibration_reward(very_sure.replace("71", "72"), "72") == 1.0  # confident and right: fine
    assert verbosity(GOOD) == 0.0
    assert verbosity("word " * 800) == pytest.approx(0.5)
    assert verbosity("same line\n" * 50) == 1.0


# --- weights --------------------------------------------------------------------------------

def test_static_weights_are_the_config():
    assert static_weights(CONFIG) == {"format": 0.25, "coherence": 0.20, "correctness": 0.55, "efficiency": 0.0,
                                      "calibration": 0.0}
    assert reward_weights(CONFIG) == static_weights(CONFIG)
    assert reward_weights(TrainingConfig(anneal_reward_weights=False), step=100) == static_weights(CONFIG)


@pytest.mark.parametrize("step", [0, 1, 125, 250, 499, 500, 10_000, -5, float("nan")])
def test_annealed_weights_sum_to_one(step):
    w = annealed_weights(CONFIG, step)
    assert set(w) == set(COMPONENTS) and all(v >= 0 for v in w.values())
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-12)
    assert w["format"] / w["coherence"] == pytest.approx(0.25 / 0.20)


def test_annealing_endpoints_and_monotone():
    last = CONFIG.max_steps - 1  # steps run 0 … max_steps − 1
    start, middle, end = (annealed_weights(CONFIG, s) for s in (0, last / 2, last))
    trace = lambda w: w["format"] + w["coherence"]  # noqa: E731
    assert trace(start) == pytest.approx(0.45) and start["correctness"] == pytest.approx(0.40)
    assert trace(end) == pytest.approx(0.25) and end["correctness"] == pytest.approx(0.60)
    assert trace(middle) == pytest.approx(0.35) and middle["correctness"] == pytest.approx(0.50)
    assert start["calibration"] == pytest.approx(0.15) == end["calibration"]
    # Step 0 relates to the static weights: same trace, and correctness 0.55 = 0.40 + 0.15 calibration.
    static = static_weights(CONFIG)
    assert trace(start) == pytest.approx(static["format"] + static["coherence"])
    assert start["correctness"] + start["calibration"] == pytest.approx(static["correctness"])
    steps = range(0, CONFIG.max_steps + 1, 25)
    traces = [trace(annealed_weights(CONFIG, s)) for s in steps]
    assert traces == sorted(traces, reverse=True)


@pytest.mark.parametrize("max_steps", [1, 2, 14, 500])
def test_the_last_step_pays_the_end_weights(max_steps):
    """Training reads steps 0 … max_steps − 1: the last one must pay exactly the end weights,
    and `final_weights` (what evaluation scores with) is that step's weighting."""
    cfg = dataclasses.replace(CONFIG, max_steps=max_steps)
    last = annealed_weights(cfg, max_steps - 1)
    assert last["format"] + last["coherence"] == pytest.approx(cfg.anneal_trace_weight_end)
    assert last["correctness"] == pytest.approx(cfg.anneal_correct_weight_end)
    assert final_weights(cfg) == last == reward_weights(cfg, max_steps - 1)
    if max_steps > 1:
        first = annealed_weights(cfg, 0)
        assert first["correctness"] == pytest.approx(cfg.anneal_correct_weight_start)
    static = dataclasses.replace(cfg, anneal_reward_weights=False)
    assert final_weights(static) == static_weights(static)


def test_annealing_reads_its_config_fields():
    cfg = TrainingConfig(anneal_trace_weight_start=0.5, anneal_trace_weight_end=0.2,
                         anneal_correct_weight_start=0.5, anneal_correct_weight_end=0.8, max_steps=10)
    assert annealed_weights(cfg, 0)["calibration"] == pytest.approx(0.0)
    assert annealed_weights(cfg, 10)["correctness"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="the rest pays calibration"):
        TrainingConfig(anneal_trace_weight_end=0.5, anneal_correct_weight_end=0.6)


def test_check_weights():
    assert check_weights({"correctness": 1.0})["format"] == 0.0
    with pytest.raises(ValueError, match="unknown reward component"):
        check_weights({"style": 1.0})
    with pytest.raises(ValueError, match="sum to 1"):
        check_weights({"format": 0.5})
    with pytest.raises(ValueError, match="finite number >= 0"):
        check_weights({"format": -0.5, "correctness": 1.5})


# --- the composite ----------------------------------------------------------------------------

def test_composite_breakdown_adds_up():
    b = composite_reward(GOOD, SOLUTION, step=100, config=CONFIG, question=QUESTION)
    assert set(b.components) == set(COMPONENTS) and b.correct and b.answer == "72" and b.difficulty == "easy"
    assert b.weights == annealed_weights(CONFIG, 100)
    assert b.total == pytest.approx(sum(b.contributions.values()) - b.penalties["verbosity"])
    assert 0.9 < b.total <= 1.0
    assert dataclasses.asdict(b)["components"] == b.components


def test_composite_uses_config_weights_by_default():
    b = composite_reward(GOOD, "72")
    assert b.weights == static_weights(CONFIG)
    custom = composite_reward(GOOD, "72", weights={"correctness": 1.0})
    assert custom.total == pytest.approx(custom.components["correctness"])


def test_composite_penalises_endless_output():
    endless = GOOD.replace("</reasoning>", "So the answer is 72.\n" * 200 + "</reasoning>")
    b = composite_reward(endless, "72", config=CONFIG)
    assert b.penalties["verbosity"] == pytest.approx(CONFIG.verbosity_penalty)
    assert b.total < composite_reward(GOOD, "72", config=CONFIG).total - 0.15


def test_score_batch_matches_composite():
    replies = [GOOD, "<answer>72</answer>", "junk"]
    batch = score_batch(replies, ["72"] * 3, CONFIG, step=3, questions=[QUESTION] * 3)
    assert [b.total for b in batch] == [composite_reward(r, "72", step=3, config=CONFIG, question=QUESTION).total
                                        for r in replies]


# --- Tunix adapters ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tunix_manager():
    from tunix.rl.grpo.grpo_learner import GRPOConfig
    from tunix.rl.reward_manager import SequenceRewardManager

    return lambda fns: SequenceRewardManager(reward_fns=fns, algo_config=GRPOConfig(num_generations=4))


def _tunix_batch(g: int = 4):
    """What GRPOLearner passes: the dataset batch's columns repeated G times (np.repeat), minus
    'prompts', plus mode; completions are the rollout texts."""
    batch = {"prompts": np.array([data.build_prompt(QUESTION), data.build_prompt("What is 5 + 5?")]),
             "answer": np.array(["72", "10"]), "question": np.array([QUESTION, "What is 5 + 5?"]),
             "difficulty": np.array(["easy", "easy"])}
    repeated = {k: np.repeat(v, g, axis=0) for k, v in batch.items()}
    completions = [GOOD, "<answer>72</answer>", GOOD.replace("72</answer>", "70</answer>"), "garbage",
                   "<reasoning>\n5 + 5 = 10\n</reasoning>\n<answer>10</answer>", "<answer>10</answer>", "", "10"]
    kwargs = {k: v for k, v in repeated.items() if k != "prompts"}
    return list(repeated["prompts"]), completions, kwargs


def test_adapters_called_as_tunix_calls_them(tunix_manager):
    steps = iter([0] * 100)
    fns = make_reward_fns(CONFIG, step_fn=lambda: next(steps))
    names = [fn.__name__ for fn in fns]
    assert names == ["reward_format", "reward_coherence", "reward_correctness", "reward_calibration",
                     "penalty_verbosity"]
    prompts, completions, kwargs = _tunix_batch()
    info = tunix_manager(fns)(prompts=prompts, completions=completions, mode="train", **kwargs)
    expected = [composite_reward(c, a, step=0, config=CONFIG, difficulty=d, question=q).total
                for c, a, d, q in zip(completions, kwargs["answer"], kwargs["difficulty"], kwargs["question"])]
    assert np.allclose(info["rewards"], expected)  # Tunix's sum of our functions = the composite
    assert info["rewards"][0] > info["rewards"][2] and info["rewards"][4] > info["rewards"][7]
    assert "rewards/reward_correctness" in info["log_metrics"]
    assert [b.total for b in fns[0].last_breakdowns()] == pytest.approx(expected)


def test_adapters_anneal_with_the_step(tunix_manager):
    step = {"now": 0}
    fns = make_reward_fns(CONFIG, step_fn=lambda: step["now"])
    manager = tunix_manager(fns)
    prompts, completions, kwargs = _tunix_batch()
    early = manager(prompts=prompts, completions=completions, mode="train", **kwargs)["rewards"]
    step["now"] = CONFIG.max_steps
    late = manager(prompts=prompts, completions=completions, mode="train", **kwargs)["rewards"]
    # "<answer>72</answer>" (right, no trace) gains as the weight moves to correctness.
    assert late[1] > early[1] + 0.05


def _total(fns, **batch):
    return np.sum([fn(**batch) for fn in fns], axis=0)


def test_adapters_without_optional_columns(tunix_manager):
    fns = make_reward_fns(CONFIG)
    prompts, completions, kwargs = _tunix_batch()
    info = tunix_manager(fns)(prompts=prompts, completions=completions, answer=kwargs["answer"], mode="eval")
    assert np.all((info["rewards"] >= 0) & (info["rewards"] <= 1))
    with pytest.raises(ValueError, match="answer has 2 entries but there are 8 completions"):
        fns[0](prompts=prompts, completions=completions, answer=np.array(["72", "10"]))


def test_adapters_accept_bytes_and_numbers():
    fns = make_reward_fns(CONFIG)
    answers = np.array([b"72", b"71", b"72"], dtype=object)
    out = _total(fns, prompts=["p"] * 3, completions=[GOOD, GOOD, GOOD], answer=answers)
    assert out[0] == out[2] > out[1]
    assert _total(fns, prompts=["p"], completions=[GOOD], answer=np.array([72]))[0] > 0.9


def test_adapter_signature_has_no_name_tunix_would_fill_from_its_config():
    import inspect

    from tunix.rl.grpo.grpo_learner import GRPOConfig

    fields = set(GRPOConfig(num_generations=2).__dict__)
    for fn in make_reward_fns(CONFIG):
        params = list(inspect.signature(fn).parameters)
        assert params == ["prompts", "completions", "answer", "kwargs"]
        assert not fields & set(params)


def test_efficiency_adapter_appears_when_weighted():
    cfg = TrainingConfig(format_reward_weight=0.2, efficiency_reward_weight=0.05)
    assert "reward_efficiency" in [fn.__name__ for fn in make_reward_fns(cfg)]
    cfg = TrainingConfig(verbosity_penalty=0.0, anneal_reward_weights=False)
    assert [fn.__name__ for fn in make_reward_fns(cfg)] == ["reward_format", "reward_coherence", "reward_correctness"]


# --- robustness and the real data --------------------------------------------------------------

PATHOLOGICAL = {
    "digits and commas": "1,234," * 180_000,
    "equals": "1 + 1 = 2 = " * 90_000,
    "open tags": "<reasoning><answer>" * 56_000,
    "nested tags": "<answer>" * 65_000 + "</answer>" * 58_000,
    "lt signs": "<" * (1 << 20),
    "one long line": "step so then " * 80_000,
    "unicode": "∑ 数学 🧮 ١٢٣ " * 40_000,
    "boxed": "<answer>\\boxed{" * 70_000 + "}" * 1000 + "</answer>",
    "answer of a million digits": "<reasoning>x</reasoning><answer>" + "9" * (1 << 20) + "</answer>",
    "long sentences": ("This is a sentence. " * 50_000),
    "long arithmetic": "<reasoning>" + "1+" * 500_000 + "1 = 500001</reasoning>",
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_one_megabyte_inputs_score_fast(name):
    text = PATHOLOGICAL[name]
    assert len(text.encode()) >= 900_000
    start = time.perf_counter()
    b = composite_reward(text, "72", config=CONFIG, question=QUESTION, step=10)
    for fn in (format_reward, coherence_reward, efficiency_reward, extract_answer, verbosity):
        fn(text)
    is_correct(text, "72")
    elapsed = time.perf_counter() - start
    assert 0.0 <= b.total <= 1.0 and all(math.isfinite(v) for v in b.components.values())
    assert elapsed < 1.0, f"{name}: {elapsed:.2f} s"


GSM8K = data.SHARED_GSM8K


@pytest.mark.skipif(not (GSM8K / "test.jsonl").is_file(), reason=f"no GSM8K copy at {GSM8K}")
def test_is_correct_agrees_with_every_gsm8k_gold_solution():
    """Every GSM8K train and test solution, rewritten into the course format, is scored correct
    against its own gold, and wrong against a different number."""
    examples = read_gsm8k_folder(GSM8K, "train") + read_gsm8k_folder(GSM8K, "test")
    assert len(examples) == 7473 + 1319
    start = time.perf_counter()
    failures = [e.question[:60] for e in examples if not is_correct(format_solution(e), e.solution)]
    assert failures == []
    off_by_one = [e for e in examples[:500]
                  if is_correct(format_solution(Example(e.question, e.solution, str(int(e.answer) + 1), e.difficulty,
                                                        e.source)), e.solution)]
    assert off_by_one == []
    assert time.perf_counter() - start < 20
