"""course_utils.filtering and the GRPO signal metrics and controls in course_utils.training (part 06)."""

import dataclasses
import json

import numpy as np
import pytest

from course_utils import filtering, training
from course_utils.config import TrainingConfig
from course_utils.data import Example, load_splits
from tools.proof import pass_rate_gain

SMOKE = TrainingConfig.for_profile("smoke")
RIGHT = "<reasoning>2+3=5</reasoning><answer>5</answer>"
WRONG = "<reasoning>2+3=6</reasoning><answer>6</answer>"


def _rate(question: str, correct: list[bool]) -> filtering.PassRate:
    k = len(correct)
    return filtering.PassRate(question, "5", "easy", tuple(correct), (True,) * k, (False,) * k, (10,) * k)


def test_mixed_group_fraction_counts_groups_with_right_and_wrong_replies():
    correct = [1, 0, 0, 0,  1, 1, 1, 1,  0, 0, 0, 0,  0, 1, 1, 0]
    assert filtering.mixed_group_fraction(correct, 4) == pytest.approx(0.5)
    assert filtering.mixed_group_fraction([True] * 8, 8) == 0.0
    with pytest.raises(ValueError):
        filtering.mixed_group_fraction([True] * 7, 4)


def test_mixed_group_probability_matches_the_facts_sheet():
    assert filtering.mixed_group_probability(0.08, 4) == pytest.approx(0.28, abs=0.005)
    assert filtering.mixed_group_probability(0.2, 8) == pytest.approx(0.83, abs=0.005)
    assert filtering.mixed_group_probability(np.array([0.0, 1.0]), 8).tolist() == [0.0, 0.0]


def test_select_keeps_prompts_solved_sometimes_not_always():
    rates = [_rate("never", [False] * 8), _rate("once", [True] + [False] * 7),
             _rate("seven", [True] * 7 + [False]), _rate("always", [True] * 8)]
    kept = filtering.select_by_pass_rate(rates, SMOKE)
    assert [r.question for r in kept] == ["once", "seven"]
    narrow = dataclasses.replace(SMOKE, filter_pass_rate_min=0.5, filter_pass_rate_max=1.0)
    assert [r.question for r in filtering.select_by_pass_rate(rates, narrow)] == ["seven", "always"]
    stats = filtering.summary(rates, SMOKE)
    assert (stats["never"], stats["always"], stats["selected"], stats["k"]) == (1, 1, 2, 8)
    assert stats["mean_pass_rate"] == pytest.approx(0.5)


def test_candidates_come_from_the_chosen_difficulties_disjoint_and_seeded():
    train = load_splits(TrainingConfig.for_profile("cpu"))["train"]
    config = TrainingConfig.for_profile("cpu", filter_difficulties="easy,medium", filter_candidates=20)
    first = filtering.candidate_prompts(train, config)
    second = filtering.candidate_prompts(train, config, 20, skip=20)
    assert len(first) == len(second) == 20
    assert {e.difficulty for e in first + second} <= {"easy", "medium"}
    assert not {e.question for e in first} & {e.question for e in second}
    assert first == filtering.candidate_prompts(train, config)
    other = filtering.candidate_prompts(train, dataclasses.replace(config, seed=1))
    assert [e.question for e in other] != [e.question for e in first]
    hard_only = [e for e in train if e.difficulty == "hard"]
    with pytest.raises(ValueError, match="filter_difficulties"):
        filtering.candidate_prompts(hard_only, config)


def test_config_checks_the_filter_and_control_fields():
    for changes, field in [({"control": "zero"}, "control"), ({"filter_difficulties": "easy,tricky"}, "filter_difficulties"),
                           ({"filter_pass_rate_min": 0.9, "filter_pass_rate_max": 0.2}, "filter_pass_rate_min"),
                           ({"filter_samples_k": 0}, "filter_samples_k"), ({"filter_prompts": "yes"}, "filter_prompts")]:
        with pytest.raises(ValueError, match=field):
            dataclasses.replace(SMOKE, **changes)
    assert not SMOKE.filter_prompts and SMOKE.control is None and SMOKE.filter_samples_k == 8


def test_samples_are_scored_with_evaluations_scorer():
    example = Example("What is 2+3?", "2+3=5\n#### 5", "5", "easy", "test")
    from course_utils.model import tiny_tokenizer

    rate = filtering.score_samples(example, [RIGHT, WRONG, "5", RIGHT], tiny_tokenizer(), SMOKE)
    assert rate.correct == (True, False, False, True) and rate.pass_rate == 0.5
    assert rate.formatted == (True, True, False, True)
    assert filtering.PassRate.from_dict(json.loads(json.dumps(dataclasses.asdict(rate)))) == rate


def test_pass_rate_gain_pairs_prompts_and_bootstraps_over_them():
    before = [_rate(f"q{i}", [True] * 2 + [False] * 6) for i in range(20)]
    after = [_rate(f"q{i}", [True] * 5 + [False] * 3) for i in reversed(range(20))]
    gain = pass_rate_gain(before, after)
    assert gain["difference"] == pytest.approx(3 / 8) and gain["low"] == pytest.approx(3 / 8)
    assert gain["before"] == pytest.approx(0.25) and gain["after"] == pytest.approx(0.625) and gain["n"] == 20
    noisy = [_rate(f"q{i}", [True] * (i % 3) + [False] * (8 - i % 3)) for i in range(20)]
    spread = pass_rate_gain(before, noisy)
    assert spread["low"] < spread["difference"] < spread["high"]
    with pytest.raises(ValueError, match="no measurement after"):
        pass_rate_gain(before, after[:5])


def test_measure_pass_rates_samples_k_caches_and_resumes(tiny_loaded, tmp_path, monkeypatch):
    config = dataclasses.replace(SMOKE, eval_batch_size=4)
    examples = load_splits(config)["train"][:5]
    args = (tiny_loaded.model, tiny_loaded.tokenizer, tiny_loaded.model_config, examples, config, tmp_path)
    rates = filtering.measure_pass_rates(*args, name="before", k=2, progress=False)
    assert [r.question for r in rates] == [e.question for e in examples]
    assert all(r.k == 2 and len(r.replies) == 2 and all(0 <= n <= config.max_generation_length for n in r.lengths)
               for r in rates)
    assert any(a != b for r in rates for a, b in [r.replies])  # sampled, not greedy: the k replies differ
    path = filtering.cache_path(tmp_path, "before", config, 2, config.seed, None)
    lines = path.read_text().splitlines()
    assert len(lines) == 5
    # A kill mid-write: two prompts done, the third's line torn. Only the missing three are sampled.
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:30])
    calls = []
    real = filtering.generate
    monkeypatch.setattr(filtering, "generate", lambda *a, **k: calls.append(len(a[3])) or real(*a, **k))
    again = filtering.measure_pass_rates(*args, name="before", k=2, progress=False)
    assert sum(calls) == 3 * 2 and [r.question for r in again] == [e.question for e in examples]
    assert again[:2] == rates[:2]
    calls.clear()
    assert filtering.measure_pass_rates(*args, name="before", k=2, progress=False) == again and not calls
    # Another seed (the "after" measurement) is another file.
    filtering.measure_pass_rates(*args[:4], config, tmp_path, name="before", k=2, seed=1, progress=False)
    assert len(list(tmp_path.glob("before-*.jsonl"))) == 2


def test_grpo_prompts_filter_by_the_actors_own_pass_rate(tiny_loaded, tmp_path):
    examples = load_splits(SMOKE)["train"]
    tok, model_config = tiny_loaded.tokenizer, tiny_loaded.model_config
    assert training.grpo_prompts(SMOKE, tiny_loaded.model, tok, examples, tmp_path, model_config) == examples
    config = dataclasses.replace(SMOKE, filter_prompts=True, filter_candidates=4, filter_samples_k=2, eval_batch_size=4)
    # The random tiny model never solves a problem: nothing is solved "sometimes".
    with pytest.raises(ValueError, match="no candidate prompt has a pass rate"):
        training.grpo_prompts(config, tiny_loaded.model, tok, examples, tmp_path, model_config)
    every = dataclasses.replace(config, filter_pass_rate_min=0.0)
    kept = training.grpo_prompts(every, tiny_loaded.model, tok, examples, tmp_path, model_config)
    assert kept == filtering.candidate_prompts(examples, every)
    assert len(list((tmp_path / "pass_rates").glob("train-before-*.jsonl"))) == 1  # measured once, then read


def test_step_metrics_log_the_correctness_signal_and_format():
    from course_utils.model import tiny_tokenizer
    from course_utils.rewards import make_reward_fns

    config = dataclasses.replace(SMOKE, num_generations=2)
    fns = make_reward_fns(config)
    completions = [RIGHT, WRONG, WRONG, "6"]
    answers = ["5"] * 4
    rewards = np.sum([fn(["p"] * 4, completions, answers) for fn in fns], axis=0)
    out = training.grpo_step_metrics(config, tiny_tokenizer(), fns)(["p"] * 4, completions, rewards, np.zeros(4))
    assert out["course/mixed_group_frac"][0] == 0.5  # group 1 right + wrong, group 2 both wrong
    assert out["course/accuracy"][0] == 0.25 and out["course/format_rate"][0] == 0.75


def test_controls_run_through_the_same_code():
    from course_utils.rewards import make_reward_fns

    lr0 = training.run_cells(["grpo_optimizer"], config=dataclasses.replace(SMOKE, control="lr0"))
    assert lr0["peak"] == 0.0 and float(lr0["grpo_schedule"](SMOKE.max_steps // 2)) == 0.0
    assert training.run_cells(["grpo_optimizer"], config=SMOKE)["peak"] == SMOKE.learning_rate
    fns = make_reward_fns(SMOKE)
    shuffled = training.shuffle_within_groups(fns, 4, seed=0)
    completions = [RIGHT, WRONG, "6", RIGHT + " extra words here", WRONG, RIGHT, "x", "5"]
    kwargs = {"question": ["What is 2+3?"] * 8}
    plain = np.array([fn(["p"] * 8, completions, ["5"] * 8, **kwargs) for fn in fns])
    mixed = np.array([fn(["p"] * 8, completions, ["5"] * 8, **kwargs) for fn in shuffled])
    assert [f.__name__ for f in shuffled] == [f.__name__ for f in fns]
    totals, shuffled_totals = plain.sum(0).reshape(2, 4), mixed.sum(0).reshape(2, 4)
    for group, got in zip(totals, shuffled_totals):  # the same rewards, within each group, moved
        assert sorted(group) == pytest.approx(sorted(got))
    assert not np.allclose(totals, shuffled_totals)
    # One permutation for all functions: each shuffled reply is paid some reply's whole total.
    columns = {tuple(np.round(c, 9)) for c in plain.T}
    assert all(tuple(np.round(c, 9)) in columns for c in mixed.T)
    assert shuffled[0].last_breakdowns()[0].correct  # logging sees the true correctness


def test_signal_curves_draw_grpo_and_control_in_the_same_panels(tmp_path):
    from course_utils.metrics import StepMetrics
    from course_utils.plots import SIGNAL_PANELS, plot_signal_curves

    for name, frac in (("grpo", 0.5), ("control", 0.25)):
        logger = StepMetrics(tmp_path / name, "grpo")
        for step in range(1, 5):
            logger.log(step, {"mixed_group_frac": frac, "accuracy": 0.1 * step, "reward_mean": 0.2,
                        "completion_length_mean": 60 + step})
    out = plot_signal_curves({"GRPO": tmp_path / "grpo" / "metrics_grpo.jsonl",
                              "control (lr0)": tmp_path / "control" / "metrics_grpo.jsonl",
                              "not run yet": tmp_path / "missing.jsonl"}, tmp_path / "signal.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[:2] == (800, 1200)
    from course_utils.metrics import read_metrics
    from course_utils.plots import _signal_figure

    fig = _signal_figure({"GRPO": read_metrics(tmp_path / "grpo" / "metrics_grpo.jsonl"),
                          "control (lr0)": read_metrics(tmp_path / "control" / "metrics_grpo.jsonl")}, None)
    signal = fig.axes[0]
    assert signal.get_title().startswith("Mixed-correctness groups")
    assert {l.get_label(): list(l.get_ydata()) for l in signal.lines} == {"GRPO": [0.5] * 4, "control (lr0)": [0.25] * 4}
    assert list(fig.axes[3].lines[0].get_ydata()) == [61, 62, 63, 64]
    empty = _signal_figure({"GRPO": []}, None)
    assert all("no data" in [t.get_text() for t in ax.texts] for ax in empty.axes)
    one = plot_signal_curves(tmp_path / "grpo" / "metrics_grpo.jsonl", tmp_path / "one.png")
    assert one.exists() and len(SIGNAL_PANELS) == 4 and SIGNAL_PANELS[0][0] == "mixed_group_frac"
