"""course_utils.config: profiles, validation (every error), JSON round trip, load_run_config."""

import dataclasses
import json
import math

import pytest

from course_utils.config import PROFILES, REWARD_WEIGHT_FIELDS, TrainingConfig, load_run_config


def test_defaults_are_the_course_design():
    c = TrainingConfig()
    assert (c.num_generations, c.beta, c.epsilon, c.learning_rate) == (4, 0.08, 0.2, 3e-6)
    assert (c.lora_rank, c.max_steps) == (8, 500)
    assert c.reward_weights == {"format": 0.25, "coherence": 0.20, "correctness": 0.55, "efficiency": 0.0}
    assert c.profile == "tpu" and c.model == "gemma3-1b-it"


@pytest.mark.parametrize("name", PROFILES)
def test_profile_is_a_replace_of_the_full_config(name):
    c = TrainingConfig.for_profile(name)
    assert c.profile == name
    # Every field a profile does not override is the full run's default, so nothing is copied.
    from course_utils.config import _PROFILE_CHANGES

    changed = set(_PROFILE_CHANGES[name]) | {"profile"}
    full = TrainingConfig()
    for f in dataclasses.fields(TrainingConfig):
        if f.name not in changed:
            assert getattr(c, f.name) == getattr(full, f.name), f.name


def test_profiles_pick_their_models():
    assert TrainingConfig.for_profile("smoke").model == "tiny"
    assert TrainingConfig.for_profile("cpu").model == "gemma3-270m"
    assert TrainingConfig.for_profile("tpu").model == "gemma3-1b-it"


def test_for_profile_overrides_and_default_change_flows_through():
    c = TrainingConfig.for_profile("smoke", beta=0.01)
    assert c.beta == 0.01 and c.model == "tiny"


def test_unknown_profile_names_the_choices():
    with pytest.raises(ValueError, match=r"profile='laptop'.*smoke, cpu, gpu, tpu"):
        TrainingConfig.for_profile("laptop")


def test_unknown_field_is_named():
    with pytest.raises(ValueError, match="lerning_rate"):
        TrainingConfig.for_profile("smoke", lerning_rate=1.0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"profile": "laptop"}, r"profile='laptop' is not allowed: choose one of"),
        ({"model": "gpt2"}, r"model='gpt2' is not allowed"),
        ({"data_source": "web"}, r"data_source='web' is not allowed"),
        ({"num_generations": 1}, r"num_generations=1 is not allowed: must be an integer >= 2"),
        ({"num_generations": 2.5}, r"num_generations=2.5 is not allowed"),
        ({"num_generations": True}, r"num_generations=True is not allowed"),
        ({"max_steps": 0}, r"max_steps=0 is not allowed"),
        ({"seed": -1}, r"seed=-1 is not allowed"),
        ({"train_examples": 0}, r"train_examples=0 is not allowed: must be an integer >= 1 or None"),
        ({"beta": -0.1}, r"beta=-0.1 is not allowed: must be a finite number in \[0.0, 10.0\]"),
        ({"epsilon": 0.0}, r"epsilon=0.0 is not allowed: must be a finite number in \(0.0, 1.0\]"),
        ({"learning_rate": math.nan}, r"learning_rate=nan is not allowed"),
        ({"learning_rate": 0}, r"learning_rate=0 is not allowed"),
        ({"top_p": 0.0}, r"top_p=0.0 is not allowed"),
        ({"temperature": -1.0}, r"temperature=-1.0 is not allowed"),
        ({"lora_rank": 0}, r"lora_rank=0 is not allowed"),
        ({"max_grad_norm": 0.0}, r"max_grad_norm=0.0 is not allowed"),
        ({"time_budget_minutes": 0}, r"time_budget_minutes=0 is not allowed.*or None"),
        ({"anneal_reward_weights": "yes"}, r"anneal_reward_weights='yes' is not allowed: must be True or False"),
        ({"format_reward_weight": -0.25, "correctness_reward_weight": 1.05}, r"format_reward_weight=-0.25 is not allowed"),
        ({"format_reward_weight": 0.5}, r"reward weights=.*must sum to 1 \(within 1e-6\) but sum to 1.25"),
        ({"global_batch_size": 6, "mini_batch_size": 4}, r"global_batch_size=6 is not allowed: must be a multiple of mini_batch_size=4"),
        ({"mini_batch_size": 4, "micro_batch_size": 3}, r"mini_batch_size=4 is not allowed: must be a multiple of micro_batch_size=3"),
        ({"max_prompt_length": 600, "max_generation_length": 512}, r"cache_size=1024 is not allowed: must hold.*600 \+ 512 = 1112"),
        ({"curriculum_easy_share": 1.5}, r"curriculum_easy_share=1.5 is not allowed: must be a finite number in \[0.0, 1.0\]"),
        ({"curriculum_easy_share": 0.7, "curriculum_medium_share": 0.5},
         r"curriculum_medium_share=0.5 is not allowed: curriculum_easy_share \+ curriculum_medium_share must be <= 1"),
    ],
)
def test_each_bad_value_is_named(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**changes)


def test_weights_sum_tolerance_is_1e6():
    TrainingConfig(format_reward_weight=0.25 + 5e-7, correctness_reward_weight=0.55)  # within 1e-6
    with pytest.raises(ValueError, match="must sum to 1"):
        TrainingConfig(format_reward_weight=0.25 + 5e-6)


def test_weights_can_be_rebalanced_if_they_sum_to_one():
    c = TrainingConfig(format_reward_weight=0.2, coherence_reward_weight=0.1,
                       correctness_reward_weight=0.6, efficiency_reward_weight=0.1)
    assert sum(getattr(c, f) for f in REWARD_WEIGHT_FIELDS) == pytest.approx(1.0)


@pytest.mark.parametrize("name", PROFILES)
def test_save_load_round_trip_exact(tmp_path, name):
    c = TrainingConfig.for_profile(name, learning_rate=1.2345678901234567e-5, time_budget_minutes=None)
    path = c.save(tmp_path / "sub" / "config.json")
    back = TrainingConfig.load(path)
    assert back == c and back.fingerprint() == c.fingerprint()
    assert json.loads(path.read_text())["learning_rate"] == 1.2345678901234567e-5


def test_load_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="Run part 02"):
        TrainingConfig.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainingConfig.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        TrainingConfig.load(bad)
    bad.write_text(json.dumps({"beta": 0.1, "gamma": 2}))
    with pytest.raises(ValueError, match="gamma"):
        TrainingConfig.load(bad)
    bad.write_text(json.dumps({"beta": -3}))
    with pytest.raises(ValueError, match="beta=-3"):
        TrainingConfig.load(bad)


def test_fingerprint_changes_with_any_field():
    a = TrainingConfig.for_profile("smoke")
    assert a.fingerprint() == TrainingConfig.for_profile("smoke").fingerprint()
    assert a.fingerprint() != dataclasses.replace(a, seed=43).fingerprint()


def test_warmup_steps_derived():
    assert TrainingConfig().warmup_steps == 50
    assert TrainingConfig.for_profile("smoke").warmup_steps == 0


def test_from_env_reads_course_profile(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    assert TrainingConfig.from_env().profile == "smoke"
    monkeypatch.setenv("COURSE_PROFILE", " CPU ")
    assert TrainingConfig.from_env().profile == "cpu"
    monkeypatch.setenv("COURSE_PROFILE", "nope")
    with pytest.raises(ValueError, match="profile='nope'"):
        TrainingConfig.from_env()


def test_from_env_defaults_to_hardware(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    assert TrainingConfig.from_env().profile == "cpu"  # the test machine has no TPU/GPU


def test_load_run_config_prefers_saved_file(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COURSE_RUN_DIR", str(tmp_path))
    fresh = load_run_config("smoke")
    assert fresh == TrainingConfig.for_profile("smoke")
    assert "built fresh" in capsys.readouterr().out
    TrainingConfig.for_profile("smoke", beta=0.02).save(tmp_path / "config.json")
    loaded = load_run_config("smoke", max_steps=7)
    assert (loaded.beta, loaded.max_steps) == (0.02, 7)
    assert "loaded" in capsys.readouterr().out
    with pytest.raises(ValueError, match="holds profile 'smoke', not 'cpu'"):
        load_run_config("cpu")


def test_evaluation_fields_follow_what_each_model_depends_on():
    a = TrainingConfig.for_profile("cpu")
    grpo_change = dataclasses.replace(a, beta=0.3, max_steps=99)
    sft_change = dataclasses.replace(a, sft_steps=5)
    decode_change = dataclasses.replace(a, max_generation_length=100, cache_size=300)
    same = lambda x, y, name: x.fingerprint(x.evaluation_fields(name)) == y.fingerprint(y.evaluation_fields(name))  # noqa: E731
    assert same(a, grpo_change, "baseline") and same(a, grpo_change, "sft") and not same(a, grpo_change, "grpo")
    assert same(a, sft_change, "baseline") and not same(a, sft_change, "sft")
    assert not same(a, decode_change, "baseline")
    assert set(a.evaluation_fields("baseline")) <= set(a.evaluation_fields("sft")) <= set(a.to_dict())
    # evaluation scores with the last GRPO step's reward weights: the annealing's end points count
    assert not same(a, dataclasses.replace(a, anneal_correct_weight_end=0.5), "baseline")


def test_grpo_algorithm_fields_are_checked_and_reach_tunix():
    from tunix.rl import function_registry
    from tunix.rl.grpo.grpo_learner import GRPOConfig

    tpu, cpu = TrainingConfig(), TrainingConfig.for_profile("cpu")
    assert tpu.loss_agg_mode == GRPOConfig(num_generations=2).loss_agg_mode  # Tunix's own default
    assert tpu.advantage_estimator == "grpo" and tpu.learn_to_stop
    assert (cpu.loss_agg_mode, cpu.advantage_estimator) == ("token-mean", "drgrpo")
    for name in ("grpo", "drgrpo", "rloo"):  # every allowed estimator is one Tunix registered
        assert callable(function_registry.get_advantage_estimator(name))
    with pytest.raises(ValueError, match="loss_agg_mode='mean'.*token-mean"):
        TrainingConfig(loss_agg_mode="mean")
    with pytest.raises(ValueError, match="advantage_estimator='gae'"):
        TrainingConfig(advantage_estimator="gae")
    with pytest.raises(ValueError, match="learn_to_stop"):
        TrainingConfig(learn_to_stop="yes")
