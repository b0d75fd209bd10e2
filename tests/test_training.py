"""course_utils.training: curriculum, batches, metrics alignment, and resume after a real kill."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from course_utils import training
from course_utils.config import TrainingConfig
from course_utils.data import Example, load_splits

SMOKE = TrainingConfig.for_profile("smoke")


def _examples(n_each: int = 5) -> list[Example]:
    return [Example(question=f"{d} question {i}?", solution=f"1+{i}=<<1+{i}={1 + i}>>{1 + i}\n#### {1 + i}",
                    answer=str(1 + i), difficulty=d, source="test")
            for d in ("easy", "medium", "hard") for i in range(n_each)]


def test_phase_at_splits_the_run_in_thirds():
    assert [training.phase_at(s, 9) for s in range(9)] == ["easy"] * 3 + ["medium"] * 3 + ["hard"] * 3
    assert training.phase_at(0, 1) == "easy"
    with pytest.raises(ValueError):
        training.phase_at(0, 0)
    for n in range(1, 40):  # the shares' default is exactly the integer thirds
        assert [training.phase_at(s, n) for s in range(n)] == [
            training.PHASES[min(2, s * 3 // n)] for s in range(n)]


def test_curriculum_shares_set_how_long_each_phase_lasts():
    assert [training.phase_at(s, 10, (0.5, 0.3)) for s in range(10)] == ["easy"] * 5 + ["medium"] * 3 + ["hard"] * 2
    assert [training.phase_at(s, 4, (0.0, 1.0)) for s in range(4)] == ["medium"] * 4
    config = dataclasses.replace(SMOKE, max_steps=10, global_batch_size=1, mini_batch_size=1,
                                 curriculum_easy_share=0.5, curriculum_medium_share=0.3)
    order = training.curriculum(_examples(4), config)
    assert [e.difficulty for e in order] == ["easy"] * 5 + ["medium"] * 3 + ["hard"] * 2
    assert [training.phase_of_step(s, config) for s in range(1, 11)] == [e.difficulty for e in order]
    cpu = TrainingConfig.for_profile("cpu")
    phases = [training.phase_of_step(s, cpu) for s in range(1, cpu.max_steps + 1)]
    assert phases[0] == "easy" and phases[-1] == "hard" and phases.count("easy") > phases.count("hard")


def test_curriculum_is_ordered_by_difficulty_and_deterministic():
    config = dataclasses.replace(SMOKE, max_steps=9, global_batch_size=2, mini_batch_size=2)
    order = training.curriculum(_examples(), config)
    assert len(order) == 18
    assert [e.difficulty for e in order] == ["easy"] * 6 + ["medium"] * 6 + ["hard"] * 6
    assert order == training.curriculum(_examples(), config)
    other = training.curriculum(_examples(), dataclasses.replace(config, seed=7))
    assert [e.question for e in other] != [e.question for e in order]


def test_curriculum_falls_back_to_all_examples_for_a_missing_difficulty():
    easy_only = [e for e in _examples() if e.difficulty == "easy"]
    order = training.curriculum(easy_only, dataclasses.replace(SMOKE, max_steps=6))
    assert len(order) == 6 and {e.difficulty for e in order} == {"easy"}
    with pytest.raises(ValueError, match="at least one training example"):
        training.curriculum([], SMOKE)


def test_batch_count_accounts_for_mini_batches_and_iterations():
    config = dataclasses.replace(SMOKE, max_steps=10, global_batch_size=4, mini_batch_size=2,
                                 micro_batch_size=2, num_iterations=2)
    assert training.grpo_batch_count(config) == 3  # each batch gives 2 mini batches × μ=2 steps
    assert training.phase_of_step(1, SMOKE) == "easy" and training.phase_of_step(4, SMOKE) == "hard"


@pytest.mark.parametrize("total, warmup", [(14, 1), (40, 4), (3, 0), (1, 0), (500, 50)])
def test_every_update_runs_at_the_logged_nonzero_learning_rate(total, warmup):
    """The first update used to run at lr 0 (optax reads the schedule at count 0). Each update
    k of part 06's GRPO optimiser (its notebook cell) must run at update_learning_rate(schedule, k) > 0."""
    import jax.numpy as jnp
    import optax

    peak = 1e-2
    config = dataclasses.replace(SMOKE, weight_decay=0.0, learning_rate=peak, max_steps=total, max_grad_norm=1.0,
                                 warmup_ratio=warmup / total)
    assert config.warmup_steps == warmup
    cell = training.run_cells(["grpo_optimizer"], config=config)
    optimizer, schedule = cell["grpo_optimizer"], cell["grpo_schedule"]
    params = {"w": jnp.zeros(())}
    state = optimizer.init(params)
    grads = {"w": jnp.asarray(0.5)}  # constant gradient: Adam's step is then exactly lr (up to eps)
    applied = []
    for _ in range(total):
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        applied.append(-float(updates["w"]))
    logged = [training.update_learning_rate(schedule, k) for k in range(1, total + 1)]
    assert applied == pytest.approx(logged, rel=1e-5)
    assert min(logged) > 0
    if warmup:
        assert logged[0] == pytest.approx(peak / warmup, rel=1e-5) and logged[warmup - 1] == pytest.approx(peak, rel=1e-5)
        assert logged[:warmup] == sorted(logged[:warmup])
    assert logged[-1] < logged[0] or total == 1
    with pytest.raises(ValueError, match="counted from 1"):
        training.update_learning_rate(schedule, 0)


@pytest.mark.parametrize("steps, global_batch, mini_batch, iterations", [(14, 2, 2, 1), (10, 4, 2, 2), (1, 1, 1, 1)])
def test_reward_step_spans_the_annealing_from_first_to_last_batch(steps, global_batch, mini_batch, iterations):
    from course_utils.rewards import annealed_weights, final_weights

    config = dataclasses.replace(SMOKE, max_steps=steps, global_batch_size=global_batch,
                                 mini_batch_size=mini_batch, micro_batch_size=mini_batch, num_iterations=iterations)
    per_batch = (global_batch // mini_batch) * iterations
    cluster = types.SimpleNamespace(actor_trainer=types.SimpleNamespace(train_steps=0))
    reward_step = training.run_cells(["reward_fns"], config=config, rl_cluster=cluster)["reward_step"]
    rolled_out = []
    for b in range(training.grpo_batch_count(config)):  # the updates done when batch b is rolled out
        cluster.actor_trainer.train_steps = b * per_batch
        rolled_out.append(reward_step())
    assert rolled_out == sorted(rolled_out) and rolled_out[-1] == steps - 1
    assert annealed_weights(config, rolled_out[-1]) == final_weights(config)
    if steps > 1:
        assert rolled_out[0] == 0


def test_the_rollout_hands_the_learner_completions_with_their_stop_token():
    """`learn_to_stop` (part 06's stop_token cell) wraps the cluster's generate: what GRPOLearner
    builds its completion ids and masks from holds the stop token of every reply that ended by itself."""
    from tunix.rl.rollout.base_rollout import RolloutOutput

    class Cluster:
        def generate(self, prompts, **kwargs):
            tokens = [np.array([7], np.int32), np.array([7, 8, 9], np.int32), np.array([], np.int32)]
            return RolloutOutput(text=["a", "a b c", ""], logits=[], tokens=tokens,
                                 left_padded_prompt_tokens=np.zeros((3, 4), np.int32), logprobs=None)

    for learn_to_stop, stopped in ((True, [[7, 106], [7, 8, 9], [106]]), (False, [[7], [7, 8, 9], []])):
        config = dataclasses.replace(SMOKE, max_generation_length=3, learn_to_stop=learn_to_stop)
        cluster = training.run_cells(["stop_token"], config=config, rl_cluster=Cluster())["rl_cluster"]
        out = cluster.generate(["p"] * 3)
        assert [t.tolist() for t in out.tokens] == stopped and out.text == ["a", "a b c", ""]
        assert all(t.dtype == np.int32 for t in out.tokens)


def test_grpo_batches_are_arrays_with_a_new_seed_each():
    import jax

    config = dataclasses.replace(SMOKE, max_steps=3, global_batch_size=2, mini_batch_size=2)
    order = training.curriculum(_examples(), config)

    class Rollout:
        seed = None

    rollout = Rollout()
    seeds, batches = [], []
    for batch in training.grpo_batches(order, config, rollout):
        seeds.append(tuple(np.asarray(jax.random.key_data(rollout.seed)).tolist()))
        batches.append(batch)
    assert len(batches) == 3 and len(set(seeds)) == 3
    first = batches[0]
    assert isinstance(first["prompts"], np.ndarray) and first["prompts"].shape == (2,)
    assert first["prompts"][0].startswith("<start_of_turn>user") and list(first["batch_index"]) == [0, 0]
    assert list(first["answer"]) == [order[0].answer, order[1].answer]


def test_deadline_stops_batches_but_never_the_fast_forward():
    order = training.curriculum(_examples(), dataclasses.replace(SMOKE, max_steps=6))
    expired = training.Deadline(1e-9)
    time.sleep(0.01)
    assert expired.expired()
    batches = training.grpo_batches(order, dataclasses.replace(SMOKE, max_steps=6), types.SimpleNamespace())
    got = list(expired.until(batches, skip=2))
    assert [int(b["batch_index"][0]) for b in got] == [0, 1, 2]  # two already trained + one new pass
    assert not training.Deadline(None).expired()


def test_the_progress_bar_shows_the_current_reward_of_each_step():
    from course_utils.model import tiny_tokenizer
    from tunix.sft import metrics_logger, progress_bar

    bar = progress_bar.ProgressBar("actor", metrics_logger.MetricsLogger(), 0, 4, "GRPO")
    cluster = type("Cluster", (), {"actor_trainer": type("Trainer", (), {"_pbar": bar})()})()
    metrics = training.grpo_step_metrics(SMOKE, tiny_tokenizer(), [], cluster)
    g = SMOKE.num_generations
    for rewards, shown in (([0.0, 1.0] * (g // 2), 0.5), ([0.123456] * g, 0.123)):
        metrics(["p"] * g, ["a"] * g, np.array(rewards), np.zeros(g))
        bar.update()  # Tunix keeps "<prefix>_train_<name>" keys on the bar and drops others
        assert bar.metrics == {"rollout_train_reward": shown}
    bar.close()
    training.grpo_step_metrics(SMOKE, tiny_tokenizer(), [], object())(["p"] * g, ["a"] * g, np.zeros(g), np.zeros(g))


def test_prompts_that_fit_drops_long_prompts(capsys):
    from course_utils.model import tiny_tokenizer

    tok = tiny_tokenizer()
    examples = _examples(2) + [dataclasses.replace(_examples(1)[0], question="long " * 400)]
    kept = training.prompts_that_fit(examples, tok, SMOKE)
    assert len(kept) == len(examples) - 1 and "dropped 1 of" in capsys.readouterr().out
    with pytest.raises(ValueError, match="raise max_prompt_length"):
        training.prompts_that_fit(examples, tok, dataclasses.replace(SMOKE, max_prompt_length=4))


def test_train_grpo_measures_pass_rates_in_the_folder_it_is_given(tiny_loaded, tmp_path):
    """The proof's path: `pass_rates_dir` replaces the run's own cache folder for the prompt filter."""
    config = dataclasses.replace(SMOKE, filter_prompts=True, filter_candidates=4, filter_samples_k=2, eval_batch_size=4)
    with pytest.raises(ValueError, match="no candidate prompt has a pass rate"):  # the random tiny model solves none
        training.train_grpo(config, tiny_loaded.model, None, tiny_loaded.tokenizer, load_splits(SMOKE)["train"],
                            tmp_path / "run", None, model_config=tiny_loaded.model_config,
                            pass_rates_dir=tmp_path / "rates")
    assert len(list((tmp_path / "rates").glob("train-before-*.jsonl"))) == 1
    assert not (tmp_path / "run" / "pass_rates").exists()


def test_sft_tokens_mask_the_prompt_and_end_the_turn():
    from course_utils.model import tiny_tokenizer

    tok = tiny_tokenizer()
    example = load_splits(SMOKE)["train"][0]
    config = dataclasses.replace(SMOKE, sft_batch_size=1, sft_steps=1, sft_max_length=400)
    batch = next(training.sft_batches([example], tok, config))
    real = batch.input_tokens[0] != 0  # padding after the target
    tokens, mask = batch.input_tokens[0][real], batch.input_mask[0][real]
    assert tokens[0] == 2 and mask[0] == 0 and mask[-1] == 1 and not batch.input_mask[0][~real].any()
    assert tokens[-1] == 106  # <end_of_turn>: the model learns to stop
    first_answer = int(np.argmax(mask))
    assert tok.decode(tokens[first_answer:].tolist()).startswith("<reasoning>")
    with pytest.raises(ValueError, match="raise it"):  # a target cut short would never stop: left out
        next(training.sft_batches([example], tok, dataclasses.replace(config, sft_max_length=20)))


# --- the real thing on the smoke profile: train, kill -9, resume ------------------------------

STEPS = 6


def _run(run_dir: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "COURSE_RUN_DIR": str(run_dir), "JAX_PLATFORMS": "cpu"}
    (run_dir).mkdir(parents=True, exist_ok=True)
    dataclasses.replace(SMOKE, max_steps=STEPS, checkpoint_every=2, time_budget_minutes=None).save(run_dir / "config.json")
    return subprocess.Popen([sys.executable, "-m", "tools.train", "--profile", "smoke"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _rows(run_dir: Path, stage: str) -> list[dict]:
    path = run_dir / f"metrics_{stage}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


@pytest.mark.slow
def test_training_killed_mid_grpo_resumes_without_repeating_or_skipping(tmp_path):
    run = tmp_path / "run"
    proc = _run(run)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        ckpt = training.latest_stage_checkpoint(run, "grpo")
        if ckpt is not None and ckpt.step >= 2 and len(_rows(run, "grpo")) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed:\n" + proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGKILL)  # a real kill, as when a Kaggle session dies
    proc.wait()
    killed_at = training.latest_stage_checkpoint(run, "grpo").step
    assert 2 <= killed_at < STEPS

    resumed = _run(run)
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-4000:]
    assert f"grpo: steps {killed_at}→{STEPS} of {STEPS}" in out
    assert f"sft: steps {SMOKE.sft_steps}→{SMOKE.sft_steps}" in out  # SFT was already done: not redone

    rows = _rows(run, "grpo")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # none repeated, none skipped
    assert [int(r["batch_index"]) for r in rows] == list(range(STEPS))  # the same data position
    assert [r["phase"] for r in rows] == ["easy"] * 2 + ["medium"] * 2 + ["hard"] * 2
    assert [r["step"] for r in _rows(run, "sft")] == list(range(1, SMOKE.sft_steps + 1))
    # no update runs at learning rate 0, and each logged rate is the one optax applied to it
    for stage, peak, total, warmup in (("sft", SMOKE.sft_learning_rate, SMOKE.sft_steps, max(1, SMOKE.sft_steps // 10)),
                                       ("grpo", SMOKE.learning_rate, STEPS, round(SMOKE.warmup_ratio * STEPS))):
        schedule = training.learning_rate_schedule(peak, total, warmup)
        logged = [r["learning_rate"] for r in _rows(run, stage)]
        assert min(logged) > 0 and logged == pytest.approx(
            [training.update_learning_rate(schedule, k) for k in range(1, total + 1)])
    final = training.latest_stage_checkpoint(run, "grpo")
    assert final.step == STEPS and final.stage == "grpo" and final.sidecar["global_step"] == STEPS
    assert final.fingerprint and final.sidecar["metrics_rows"] >= killed_at
    assert (run / "metrics_grpo.csv").read_text().count("\n") == STEPS + 1


@pytest.mark.slow
def test_a_session_stopped_before_grpo_leaves_no_grpo_checkpoint_and_the_next_continues(part06_sessions):
    """Session 1's budget ran out in SFT: no step-0 GRPO checkpoint (which session 2 would restore
    over its finished SFT weights); session 2, started from session 1's output, finishes both."""
    s, steps = part06_sessions, part06_sessions.config.sft_steps
    first, second = s.first / "runs" / "smoke", s.second / "runs" / "smoke"
    assert "time budget" in s.log1 and "run this part again" in s.log1
    stopped = training.latest_stage_checkpoint(first, "sft")
    assert stopped is not None and stopped.stage == "sft" and 1 <= stopped.step < steps
    assert training.latest_stage_checkpoint(first, "grpo") is None
    assert not training.checkpoint_dir(first, "grpo").joinpath("0").exists()
    assert f"sft: steps {stopped.step}→{steps} of {steps}" in s.log2
    assert f"grpo: steps 0→{s.config.max_steps} of {s.config.max_steps}" in s.log2
    assert training.latest_stage_checkpoint(second, "grpo").step == s.config.max_steps
    assert [r["step"] for r in _rows(second, "sft")] == list(range(1, steps + 1))


def test_prepare_stage_removes_only_a_step_0_checkpoint(part06_sessions, tmp_path):
    """A step-0 checkpoint (as Tunix 0.1.7 saved when GRPO closed before its first step: here a
    real Orbax checkpoint of this run copied to step 0) is removed; trained ones stay."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(part06_sessions.second / "runs" / "smoke", run)
    grpo = training.checkpoint_dir(run, "grpo")
    trained = training.latest_stage_checkpoint(run, "grpo")
    shutil.copytree(trained.path, grpo / "0")
    for stage in ("grpo", "sft"):
        training.prepare_stage(run, stage, part06_sessions.config)
    assert training.latest_stage_checkpoint(run, "grpo").step == trained.step
    assert not (grpo / "0").exists() and (grpo / str(trained.step)).is_dir()
    assert training.latest_stage_checkpoint(run, "sft").step == part06_sessions.config.sft_steps


def test_resume_refuses_a_change_of_the_training_data(part06_sessions):
    """val_examples is drawn before the train split, so changing it changes the training data:
    resuming either stage refuses, naming it; a new time budget is fine."""
    from course_utils.checkpoints import ConfigMismatchError
    from course_utils.config import DATA_FIELDS

    run, config = part06_sessions.second / "runs" / "smoke", part06_sessions.config
    for stage in ("sft", "grpo"):
        assert set(DATA_FIELDS) <= set(config.stage_fields(stage))
        for field, value in (("val_examples", config.val_examples + 1), ("train_examples", 7)):
            with pytest.raises(ConfigMismatchError, match=field):
                training.prepare_stage(run, stage, dataclasses.replace(config, **{field: value}))
        training.prepare_stage(run, stage, dataclasses.replace(config, time_budget_minutes=3.0))


def test_reserve_keeps_minutes_of_the_budget_for_what_follows():
    budget = training.Deadline(10.0)
    kept = budget.reserve(4.0)
    assert kept.minutes == 6.0 and 5.9 * 60 < kept.end - time.monotonic() <= 6.0 * 60 and not kept.expired()
    assert budget.reserve(10.0).expired() and budget.reserve(12.0).minutes == 0.0
    assert training.Deadline(None).reserve(5.0).end is None
    with pytest.raises(ValueError):
        budget.reserve(-1.0)


def test_run_config_reads_the_run_folders_own_config(tmp_path, monkeypatch):
    from course_utils.config import TrainingConfig
    from tools.train import run_config

    monkeypatch.setenv("COURSE_RUN_DIR", str(tmp_path / "default"))
    TrainingConfig.for_profile("smoke", sft_steps=7).save(tmp_path / "config.json")
    assert run_config(tmp_path, "smoke").sft_steps == 7
    assert run_config(tmp_path, None).sft_steps == 7
    assert run_config(tmp_path / "empty", "smoke").sft_steps == TrainingConfig.for_profile("smoke").sft_steps
    with pytest.raises(SystemExit, match="holds profile 'smoke', not 'cpu'"):
        run_config(tmp_path, "cpu")


# --- part 06's cells: the one source of the training objects -------------------------------------


def _course_utils_names(tree) -> set[str]:
    import ast

    return {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("course_utils") for a in node.names}


@pytest.mark.parametrize("part", ["04_model_and_lora", "06_training"])
def test_each_cell_imports_the_course_utils_helpers_it_uses(part):
    """A learner copies single cells: each must import every course_utils name it uses."""
    import ast

    import jupytext

    cells = [c.source for c in jupytext.read(training.NOTEBOOK.parent / f"{part}.py").cells if c.cell_type == "code"]
    helpers = set().union(*(_course_utils_names(ast.parse(c)) for c in cells if not c.startswith("#")))
    for source in cells:
        tree = ast.parse(source)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        assert (used & helpers) <= _course_utils_names(tree), source


def test_part_06_builds_every_training_object_in_a_short_tagged_cell():
    cells = training.notebook_cells()
    assert set(training.SFT_CELLS + training.GRPO_CELLS) <= set(cells)
    assert {tag: len(cells[tag].strip().splitlines()) for tag in cells if len(cells[tag].strip().splitlines()) > 15} == {}
    built = "".join(cells[tag] for tag in training.SFT_CELLS + training.GRPO_CELLS)
    for constructor in ("optax.adamw", "peft_trainer.TrainingConfig", "peft_trainer.PeftTrainer", "GRPOConfig(",
                        "RolloutConfig(", "RLTrainingConfig(", "ClusterConfig(", "RLCluster(", "GRPOLearner("):
        assert constructor in built, constructor
