"""Evaluation (part 07): number extraction, arithmetic checks, error categories, statistics,
tables, plots, checkpoint discovery and a small end-to-end run on the smoke model."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from course_utils import evaluation as ev
from course_utils.config import TrainingConfig

GOOD = "<reasoning>Natalia sold 48/2 = 24 clips in May.\n48 + 24 = 72 clips in total.</reasoning>\n<answer>72</answer>"


# --- numbers and arithmetic: part 03's parser and checker, one answer everywhere ------------------


@pytest.mark.parametrize("text, expected", [
    ("I have $1,234.50 and 3 apples", ["1234.5", "3"]),
    ("5-3=2", ["5", "3", "2"]),
    ("so x = -7.", ["-7"]),
    ("-4 degrees", ["-4"]),
    ("temp-5", ["5"]),
    ("1,2 is a list", ["1", "2"]),
    ("1,2345 is not grouped", ["1", "2345"]),
    ("12,345,678 people", ["12345678"]),
    ("version 1.2.3", ["1.2"]),
    ("50% off, 3/4 left", ["50", "3", "4"]),
    ("no digits here", []),
    ("", []),
])
def test_find_numbers(text, expected):
    from course_utils.rewards import find_numbers

    assert find_numbers(text) == expected


def test_last_number_handles_any_input_in_one_pass():
    from course_utils.rewards import find_numbers

    assert find_numbers(None) == [] and find_numbers(12) == []
    # Inputs that make backtracking regexes explode return promptly and correctly.
    digits = "1" * 200_000
    assert find_numbers(digits) == [digits]
    commas = "1" + ",111" * 50_000 + "1"
    assert find_numbers(commas)[-1] == "1111"
    mixed = "-1." * 100_000
    assert len(find_numbers(mixed)) == 100_000
    assert ev.score_reply("the answer is 42. Done", "42")["last_number"] == "42"


def test_answers_match_and_tolerance():
    from course_utils.rewards import answers_match

    assert answers_match("18.00", "18") and answers_match("1,080", 1080) and answers_match("0.5", "1/2")
    assert not answers_match("18", "19") and not answers_match(None, "1")

    def partial(answer: str, gold: str) -> bool:
        return ev.score_reply(f"<reasoning>so</reasoning><answer>{answer}</answer>", gold)["partial"]

    assert partial("99", "100") and partial("110", "100") and partial("0", "0")
    assert not partial("111", "100") and not partial("-100", "100") and not partial("0.01", "0")


@pytest.mark.parametrize("text, verdicts", [
    ("48/2 = 24", [True]),
    ("3 + 4 = 8", [False]),
    ("2 + 3 * 4 = 14", [True]),           # precedence: not (2 + 3) * 4
    ("2 + 3 + 4 = 9", [True]),            # the whole chain, not just 3 + 4
    ("(2 + 3) * 4 = 20", [True]),
    ("3 x 4 = 12 and 3 × 5 = 16", [True, False]),
    ("10/3 = 3.33, 2/3 = 0.67", [True, True]),  # rounded to the decimals written
    ("10/3 = 3.4", [False]),
    ("7 - -2 = 9", [True]),
    ("$3 * $4 = $12", [True]),
    ("5 * 6 = 30 = 31", [True]),           # "30 = 31" has no operator: not judged
    ("<<5*6=31>>31", [False]),
    ("20% * 50 = 10", [True]),             # a percentage is a fraction
    ("5 / 0 = 1", []),                     # division by zero is not judged
    ("3 apples + 4 = 7", [True]),          # unit words are skipped
    ("S + 2S = 3S = 12", []),              # algebra is not arithmetic
    ("x = 5", []),
])
def test_check_arithmetic(text, verdicts):
    from course_utils.rewards import check_arithmetic

    assert [c.ok for c in check_arithmetic(text)] == verdicts


def test_two_thirds_is_not_0_66_anywhere():
    """One checker: `2/3 = 0.66` (0.666… cut, not rounded) is wrong to the reward that training
    pays, to the arithmetic check, and to evaluation's error analysis."""
    from course_utils.rewards import _Reply, check_arithmetic

    reply = "<reasoning>Each gets 2/3 = 0.66 of a pie.</reasoning><answer>0.66</answer>"
    assert [(c.text, c.ok) for c in check_arithmetic(reply)] == [("2 / 3 = 0.66", False)]
    assert (_Reply(reply).trace.valid, _Reply(reply).trace.invalid) == (0, 1)
    row = ev.score_reply(reply, "0.67")
    assert row["error"] == "wrong_arithmetic" and row["wrong_calculations"] == ["2 / 3 = 0.66"]
    right = reply.replace("0.66", "0.67")
    assert _Reply(right).trace.invalid == 0 and ev.score_reply(right, "0.67")["error"] == "correct"


# --- one reply -------------------------------------------------------------------------------------------


def test_score_reply_correct():
    row = ev.score_reply(GOOD, "72")
    assert row["strict"] and row["lenient"] and row["format"] and row["partial"] and row["error"] == "correct"
    assert 0 < row["reward"] <= 1 and {"reward_format", "reward_correctness"} <= set(row)
    assert row["answer"] == "72" and row["calculations"] == 2 and row["wrong_calculations"] == []


@pytest.mark.parametrize("reply, kwargs, category", [
    ("<reasoning>Natalia sold 48/2 = 24 and 48 + 24", {"n_tokens": 16, "max_new_tokens": 16}, "truncated"),
    ("<reasoning>Natalia sold 48/2 = 24 and 48 + 24", {"n_tokens": 5, "max_new_tokens": 16}, "format_broken"),
    # the base model echoes the prompt, tags included, until the limit: that is not a closed answer
    ("Write it between <answer> and </answer>. Write it between <answer> and", {"n_tokens": 16, "max_new_tokens": 16},
     "truncated"),
    (GOOD.replace("72", "70") + " and so on", {"n_tokens": 16, "max_new_tokens": 16}, "truncated"),
    (GOOD.replace("72", "70"), {"n_tokens": 16, "max_new_tokens": 16}, "wrong_arithmetic"),
    ("I do not know.", {}, "no_answer"),
    ("", {}, "no_answer"),
    ("The answer is 72.", {}, "format_broken"),
    ("<answer>72</answer><reasoning>48 + 24 = 72</reasoning> and 72", {}, "correct"),
    ("<reasoning>48/2 = 25. 48 + 25 = 73</reasoning><answer>73</answer>", {}, "wrong_arithmetic"),
    ("<reasoning>48 * 2 = 96. 96 + 24 = 120</reasoning><answer>120</answer>", {}, "wrong_answer"),
])
def test_error_categories(reply, kwargs, category):
    assert ev.score_reply(reply, "72", **kwargs)["error"] == category


def test_format_is_strict_and_lenient_reads_the_last_number():
    wrapped = "Sure! " + GOOD
    row = ev.score_reply(wrapped, "72")
    assert row["strict"] and not row["format"]
    row = ev.score_reply("<reasoning>48 + 24 = 72</reasoning><answer>70</answer> oh wait, 72", "72")
    assert not row["strict"] and row["lenient"] and row["partial"] and not row["format"]


@pytest.mark.parametrize("junk", [None, 123, b"bytes", "<answer>" * 10_000, "\x00\udcff", "9" * 100_000])
def test_score_reply_never_raises(junk):
    row = ev.score_reply(junk, "72")
    assert row["error"] in ev.ERROR_CATEGORIES and not row["strict"]


QUESTION = "Natalia sold clips to 48 friends in April, and half as many in May. How many clips in all?"
MADE_UP = ("<reasoning>\nFirst 17 + 26 = 43.\nThen 43 + 29 = 72.\nSo the total is 72.\n</reasoning>\n"
           "<answer>72</answer>")  # right answer, true arithmetic on numbers the question never gives


def test_evaluation_scores_exactly_what_training_pays():
    """Parity: evaluation's composite reward equals the sum of the reward functions GRPO trains
    with (through Tunix's own reward manager) at the last GRPO step, for the same question,
    reply, answer and difficulty, including made-up arithmetic that only the question exposes."""
    from tunix.rl.grpo.grpo_learner import GRPOConfig
    from tunix.rl.reward_manager import SequenceRewardManager

    import types

    from course_utils import rewards, training
    from course_utils.data import build_prompt

    config = TrainingConfig.for_profile("cpu")
    last_update = config.max_steps - 1  # updates done when the last batch is rolled out
    cluster = types.SimpleNamespace(actor_trainer=types.SimpleNamespace(train_steps=last_update))
    fns = training.run_cells(["reward_fns"], config=config, rl_cluster=cluster)["reward_fns"]  # part 06's
    replies = [GOOD, MADE_UP, GOOD.replace("72</answer>", "70</answer>"), "The answer is 72.",
               "<reasoning>\n48 / 2 = 24\n" * 30 + "</reasoning>"]
    g = len(replies)
    manager = SequenceRewardManager(reward_fns=fns, algo_config=GRPOConfig(num_generations=g))
    paid = manager(prompts=[build_prompt(QUESTION)] * g, completions=replies, mode="train",
                   answer=np.array(["72"] * g), question=np.array([QUESTION] * g),
                   difficulty=np.array(["easy"] * g))["rewards"]
    examples = [{"question": QUESTION, "answer": "72", "difficulty": "easy"}] * g
    scored = ev.evaluate_responses("parity", examples, replies, config=config, seed=0)
    assert [row["reward"] for row in scored.rows] == pytest.approx(list(paid), abs=1e-9)
    # the question matters: without it the made-up arithmetic would be paid as real reasoning
    blind = ev.score_reply(MADE_UP, "72", config=config, difficulty="easy")["reward"]
    assert blind > scored.rows[1]["reward"] + 0.01
    # and the weights are the last step's, not the static ones
    assert rewards.final_weights(config) != rewards.static_weights(config)


def test_one_truncation_rule_for_training_and_evaluation():
    from course_utils import training

    assert ev.is_truncated("<reasoning>48 + 24", 16, 16) and ev.is_truncated("<reasoning>48 + 24", 14, 16)
    assert not ev.is_truncated("<reasoning>48 + 24", 13, 16) and not ev.is_truncated("x", None, 16)
    assert not ev.is_truncated(GOOD, 16, 16)  # closed its answer at the limit: it stopped in time
    config = TrainingConfig.for_profile("smoke", num_generations=2, max_generation_length=6)

    class Words:  # one token per word
        def encode(self, text):
            return text.split()

        def decode(self, ids):
            return " ".join(ids)

        def bos_id(self):
            return 2

        def eos_id(self):
            return 1

        def pad_id(self):
            return 0

    metrics = training.grpo_step_metrics(config, Words(), [])
    completions = ["a b c d e f g", "<answer>1</answer>", "a b c d e </answer>", "a"]
    rate = metrics(prompts=["p"] * 4, completions=completions, rewards=np.zeros(4), advantages=np.zeros(4))
    expected = np.mean([ev.is_truncated(c, min(len(c.split()), 6), 6) for c in completions])
    assert rate["course/truncation_rate"][0] == pytest.approx(expected) == pytest.approx(0.25)


def test_evaluate_responses_checks_lengths():
    with pytest.raises(ValueError, match="pair up"):
        ev.evaluate_responses("m", [{"question": "1 + 0?", "answer": "1"}], ["a", "b"])


# --- statistics --------------------------------------------------------------------------------------------


def test_bootstrap_ci_is_seeded_contains_the_mean_and_has_the_expected_width():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2, size=400).astype(float)
    mean, low, high = ev.bootstrap_ci(values, seed=3)
    assert (mean, low, high) == ev.bootstrap_ci(values, seed=3)
    assert low < mean < high
    expected = 2 * 1.96 * math.sqrt(mean * (1 - mean) / len(values))  # normal approximation
    assert abs((high - low) - expected) < 0.25 * expected
    assert ev.bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    assert ev.bootstrap_ci([0.5]) == (0.5, 0.5, 0.5)
    assert all(math.isnan(x) for x in ev.bootstrap_ci([]))
    assert ev.bootstrap_ci([1.0, float("nan"), 0.0])[0] == 0.5


def test_summarize_bootstraps_each_metric_on_its_own_values():
    """Every metric's interval is bootstrap_ci of that metric's values; a problem lacking one
    metric (NaN) is left out of that metric only."""
    rng = np.random.default_rng(1)
    rows = [{"strict": bool(rng.integers(0, 2)), "reward": float(rng.random()), "error": "correct"} for _ in range(50)]
    rows[3]["reward"] = float("nan")
    result = ev.summarize("m", rows, seed=5)
    for metric in ("strict", "reward"):
        mean, low, high = ev.bootstrap_ci(result.values(metric), seed=5)
        assert result.metrics[metric] == {"mean": mean, "low": low, "high": high, "n": 50 - (metric == "reward")}


def test_paired_bootstrap():
    a = np.array([0, 1, 0, 1, 0, 0, 1, 0] * 10, dtype=float)
    same = ev.paired_bootstrap(a, a)
    assert same == {"difference": 0, "low": 0, "high": 0, "n": len(a)}
    better = ev.paired_bootstrap(a, np.ones_like(a))
    assert better["difference"] == pytest.approx(1 - a.mean()) and better["low"] > 0
    # Pairing matters: b = a + noise-free shift of one problem is detected although the groups overlap.
    b = a.copy()
    b[0] = 1
    assert ev.paired_bootstrap(a, b)["low"] >= 0
    with pytest.raises(ValueError):
        ev.paired_bootstrap([1, 0], [1, 0, 1])


@pytest.mark.parametrize("n, c, k", [(4, 0, 1), (4, 1, 1), (4, 1, 2), (5, 2, 3), (6, 3, 6), (8, 5, 2), (7, 0, 7)])
def test_pass_at_k_equals_brute_force(n, c, k):
    samples = [True] * c + [False] * (n - c)
    draws = list(itertools.combinations(range(n), k))
    brute = sum(any(samples[i] for i in d) for d in draws) / len(draws)
    assert ev.pass_at_k(n, c, k) == pytest.approx(brute)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ev.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        ev.pass_at_k(4, 1, 5)


def test_majority_vote():
    assert ev.majority_answer(["3", "18", "18.00", None, "3"]) == "3"  # tie → first seen
    assert ev.majority_answer(["3", "18", "18.0", None]) == "18"
    assert ev.majority_answer([None, None]) is None
    scored = ev.sampled_scores([[GOOD, "<answer>5</answer>", GOOD.replace(">72<", ">71<")]], ["72"], k=3)[0]
    assert scored["pass_at_k"] == 1.0 and scored["maj_at_k"] and scored["pass_at_1"] == pytest.approx(1 / 3)
    wrong = ev.sampled_scores([["<answer>5</answer>", "<answer>5</answer>", GOOD]], ["72"])[0]
    assert wrong["pass_at_k"] == 1.0 and not wrong["maj_at_k"] and wrong["majority"] == "5"


# --- results of several models -------------------------------------------------------------------------------

EXAMPLES = [{"question": f"What is {i} + {i}?", "answer": str(2 * i), "difficulty": "easy"} for i in range(1, 7)]


def _reply(i: int, answer: int, tidy: bool = True) -> str:
    body = f"<reasoning>{i} + {i} = {answer}</reasoning><answer>{answer}</answer>"
    return body if tidy else f"I think {answer}"


@pytest.fixture
def three_models():
    baseline = ev.evaluate_responses("baseline", EXAMPLES, [_reply(i, 2 * i + 1, tidy=False) for i in range(1, 7)])
    sft = ev.evaluate_responses("sft", EXAMPLES, [_reply(i, 2 * i + (i % 2)) for i in range(1, 7)],
                                samples=[[_reply(i, 2 * i), _reply(i, 0)] for i in range(1, 7)])
    grpo = ev.evaluate_responses("grpo", EXAMPLES, [_reply(i, 2 * i) for i in range(1, 7)],
                                 samples=[[_reply(i, 2 * i), _reply(i, 2 * i)] for i in range(1, 7)])
    return baseline, sft, grpo


def test_evaluate_responses_summarises_every_metric(three_models):
    baseline, sft, grpo = three_models
    assert baseline.metrics["strict"]["mean"] == 0 and baseline.metrics["format"]["mean"] == 0
    assert sft.metrics["strict"]["mean"] == pytest.approx(0.5) and grpo.metrics["strict"]["mean"] == 1
    assert grpo.metrics["pass_at_k"]["mean"] == 1 and sft.metrics["maj_at_k"]["mean"] == 1  # tie → first sample
    assert sft.errors["wrong_arithmetic"] == 3 and baseline.errors["format_broken"] == 6
    assert sum(grpo.errors.values()) == len(EXAMPLES)
    low, high = sft.metrics["strict"]["low"], sft.metrics["strict"]["high"]
    assert 0 <= low <= 0.5 <= high <= 1


def test_comparison_table_has_paired_differences(three_models):
    paired = ev.differences(list(three_models))
    assert list(paired) == ["sft − baseline", "grpo − baseline", "grpo − sft"]
    gain = paired["grpo − sft"]["strict"]
    assert gain["difference"] == pytest.approx(0.5) and gain["low"] > 0
    table = ev.markdown_table(list(three_models))
    assert "| strict accuracy | 0.0 % [0.0, 0.0] | 50.0 %" in table
    assert "| grpo − sft |" in table and "| wrong_arithmetic | 0 | 3 | 0 |" in table
    assert "pass@2 (sampled)" in table


def test_save_and_load_results_round_trip(three_models, tmp_path):
    baseline, sft, grpo = three_models
    ev.save_results([baseline], tmp_path)
    paths = ev.save_results([grpo, sft], tmp_path)  # merged with what is there, in table order
    data = json.loads(paths["json"].read_text())
    assert [r["name"] for r in data["results"]] == ["baseline", "sft", "grpo"] and data["differences"]
    loaded = ev.load_results(tmp_path)
    assert [r.name for r in loaded] == ["baseline", "sft", "grpo"]
    assert loaded[2].metrics == grpo.metrics and loaded[1].rows[0]["response"] == sft.rows[0]["response"]
    assert paths["markdown"].read_text().startswith("| metric |")
    assert len(paths["sft"].read_text().splitlines()) == len(EXAMPLES)
    assert not [p for p in (tmp_path / "eval").iterdir() if p.name.startswith(".")]


def test_plot_score_distributions_writes_a_png(three_models, tmp_path):
    from course_utils.plots import plot_evaluation

    path = plot_evaluation(list(three_models), tmp_path / "plots" / "eval.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


# --- checkpoints ----------------------------------------------------------------------------------------------


def _fake_step(root: Path, step: int) -> None:
    """A committed Orbax step as Tunix writes it: arrays, then Orbax's step metadata."""
    params = root / str(step) / "model_params"
    params.mkdir(parents=True)
    (params / "_METADATA").write_text("{}")
    (root / str(step) / "_CHECKPOINT_METADATA").write_text('{"custom_metadata": {}}')


def test_find_checkpoint_prefers_the_newest_complete_step(tmp_path):
    assert ev.find_checkpoint(tmp_path, "sft", search_kaggle_inputs=False) is None
    _fake_step(tmp_path / "checkpoints" / "sft", 2)
    _fake_step(tmp_path / "checkpoints" / "sft", 10)
    (tmp_path / "checkpoints" / "sft" / "20.orbax-checkpoint-tmp-0" / "model_params").mkdir(parents=True)  # killed save
    found = ev.find_checkpoint(tmp_path, "sft", search_kaggle_inputs=False)
    assert found.step == 10 and found.path.name == "model_params"
    _fake_step(tmp_path / "checkpoints" / "grpo" / "actor", 4)  # RLCluster keeps the policy under actor/
    assert ev.find_checkpoint(tmp_path, "grpo", search_kaggle_inputs=False).step == 4


def test_find_checkpoint_searches_attached_kaggle_inputs(tmp_path, monkeypatch):
    inputs = tmp_path / "input"
    _fake_step(inputs / "other-notebook" / "runs" / "smoke" / "checkpoints" / "sft", 9)
    _fake_step(inputs / "notebooks" / "me" / "training" / "runs" / "cpu" / "checkpoints" / "sft", 3)
    monkeypatch.setattr(ev, "KAGGLE_INPUT", inputs)
    run = tmp_path / "working" / "runs" / "cpu"
    found = ev.find_checkpoint(run, "sft")
    assert found.step == 3 and "training" in str(found.path)  # the input of this profile's run first
    assert ev.find_checkpoint(tmp_path / "runs" / "smoke", "sft").step == 9
    assert ev.find_checkpoint(tmp_path / "runs" / "tpu", "sft") is not None  # another profile's, if nothing else
    assert ev.find_checkpoint(run, "grpo") is None


# --- end to end on the smoke model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tiny_loaded):
    return TrainingConfig.for_profile("smoke"), tiny_loaded


def test_evaluate_model_on_the_smoke_model(smoke, tmp_path):
    from course_utils.data import load_gsm8k

    config, loaded = smoke
    examples = load_gsm8k("test", source="synthetic", limit=3, verbose=False)
    result = ev.evaluate_model(loaded, examples=examples, config=config, name="baseline", k=2, progress=False)
    ev.save_results([result], tmp_path)
    def saved(name, examples, **settings):
        return ev._reusable(tmp_path, name, examples, ev._plan(name, config, examples, **settings))

    assert saved("baseline", examples, k=2).metrics == result.metrics
    assert saved("baseline", examples, k=1).metrics == result.metrics  # greedy only: any k will do
    assert saved("baseline", examples, k=3) is None and saved("baseline", examples[:2], k=2) is None
    assert saved("sft", examples, k=2) is None
    assert len(result.rows) == 3 and result.settings["k"] == 2 and result.settings["sampled_examples"] == 3
    assert all(len(r["sampled"]["replies"]) == 2 for r in result.rows)
    assert all(isinstance(r["response"], str) and r["length_tokens"] <= config.max_generation_length
               for r in result.rows)
    assert {"strict", "lenient", "format", "partial", "reward", "pass_at_k", "maj_at_k", "length_tokens"} <= set(result.metrics)
    assert sum(result.errors.values()) == 3
    again = ev.evaluate_model(loaded, examples=examples[:2], config=config, k=1, progress=False)
    assert [r["response"] for r in again.rows] == [r["response"] for r in result.rows[:2]]  # greedy is deterministic
    assert "sampled" not in again.rows[0]


def test_evaluate_or_reuse_saves_then_reuses_and_notices_a_new_checkpoint(smoke, tmp_path, monkeypatch, capsys):
    from course_utils.data import load_gsm8k

    config, loaded = smoke
    examples = load_gsm8k("test", source="synthetic", limit=2, verbose=False)
    first = ev.evaluate_or_reuse("sft", loaded, config, examples, tmp_path, checkpoint="step 3", progress=False)
    assert [r.name for r in ev.load_results(tmp_path)] == ["sft"]
    calls = []
    real = ev.generate_replies
    monkeypatch.setattr(ev, "generate_replies", lambda *a, **k: calls.append(k) or real(*a, **k))
    again = ev.evaluate_or_reuse("sft", loaded, config, examples, tmp_path, checkpoint="step 3", progress=False)
    assert calls == [] and again.metrics == first.metrics and "reusing" in capsys.readouterr().out
    ev.evaluate_or_reuse("sft", loaded.model, config, examples, tmp_path, loaded=loaded, checkpoint="step 6",
                         progress=False)
    assert len(calls) == 1 and ev.load_results(tmp_path)[0].settings["checkpoint"] == "step 6"


def test_load_trained_model_restores_saved_lora_weights(smoke, tmp_path):
    import jax
    from flax import nnx

    from course_utils.export import save_tunix_lora
    from course_utils.generate import forward_logits
    from course_utils.lora import apply_lora

    config, loaded = smoke
    lora_model = apply_lora(loaded.model, config)
    leaves, treedef = jax.tree.flatten(nnx.state(lora_model, nnx.LoRAParam))
    nnx.update(lora_model, jax.tree.unflatten(treedef, [jax.numpy.full(x.shape, 0.01, x.dtype) for x in leaves]))
    save_tunix_lora(lora_model, tmp_path / "checkpoints" / "sft", step=3, config=config)
    found = ev.find_checkpoint(tmp_path, "sft", search_kaggle_inputs=False)
    assert found.step == 3
    trained = ev.load_trained_model(config, found, base=loaded)
    tokens = np.array([[2, 10, 11, 12, 13]], dtype=np.int32)
    assert np.array_equal(np.asarray(forward_logits(trained.model, tokens)), np.asarray(forward_logits(lora_model, tokens)))
    wrong_rank = TrainingConfig.for_profile("smoke", lora_rank=config.lora_rank * 2)
    with pytest.raises(ValueError, match="lora_rank"):
        ev.load_trained_model(wrong_rank, found, base=loaded)


def test_evaluate_model_reuses_saved_greedy_replies_and_only_samples(smoke, tmp_path, monkeypatch):
    from course_utils.data import load_gsm8k

    config, loaded = smoke
    examples = load_gsm8k("test", source="synthetic", limit=2, verbose=False)
    greedy = ev.evaluate_or_reuse("grpo", loaded, config, examples, tmp_path, checkpoint="step 4", progress=False)
    calls = []
    real = ev.generate_replies
    monkeypatch.setattr(ev, "generate_replies", lambda *a, **k: calls.append(k["greedy"]) or real(*a, **k))
    both = ev.evaluate_model(loaded, examples=examples, config=config, name="grpo", k=2, checkpoint="step 4",
                             run_dir=tmp_path, progress=False)
    assert calls == [False, False]  # two sampled rounds; the greedy replies came from disk
    assert [r["response"] for r in both.rows] == [r["response"] for r in greedy.rows]
    ev.evaluate_model(loaded, examples=examples, config=config, name="grpo", k=1, checkpoint="step 8",
                      run_dir=tmp_path, progress=False)
    assert calls[-1] is True  # another checkpoint: generated again


def test_generate_replies_batches_prompts_of_similar_length_and_keeps_their_order(monkeypatch):
    import course_utils.generate as gen

    class Words:  # one token per word
        def encode(self, text):
            return text.split()

        def decode(self, ids):
            return " ".join(ids)

        def bos_id(self):
            return 2

        def eos_id(self):
            return 1

        def pad_id(self):
            return 0

    batches = []

    def fake_generate(model, tokenizer, model_config, prompts, config, **kwargs):
        batches.append([len(p.split()) for p in prompts])
        return [f"reply to {p}" for p in prompts]

    monkeypatch.setattr(gen, "generate", fake_generate)
    prompts = [" ".join(["w"] * n) + f" #{i}" for i, n in enumerate([9, 1, 7, 3, 8, 2, 5])]
    config = TrainingConfig.for_profile("smoke")
    replies = ev.generate_replies(None, Words(), None, prompts, config, batch_size=3, progress=False)
    assert replies == [f"reply to {p}" for p in prompts]
    assert batches == [[2, 3, 4], [6, 8, 9], [10]]  # shortest first, three to a batch
