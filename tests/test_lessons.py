"""The numbers and formulas the notebooks teach, checked against the code they describe
(Tunix 0.1.7's loss and advantages, the course's config and rewards)."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tunix.rl import algo_core, common
from tunix.rl.grpo.grpo_learner import GRPOConfig

from course_utils.config import TrainingConfig

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


# --- part 02: the clip, the aggregation, the std -------------------------------------------
class TableLM(nnx.Module):
    """Part 02's stand-in policy: one learnable row of logits per position."""

    def __init__(self, logits):
        self.logits = nnx.Param(jnp.asarray(logits, jnp.float32))

    def __call__(self, tokens, positions=None, cache=None, attention_mask=None):
        return jnp.broadcast_to(self.logits[...], (tokens.shape[0], *self.logits.shape)), None


PROMPT, REPLY, ADV = jnp.array([[2], [2]]), jnp.array([[3, 4, 5], [5, 3, 4]]), jnp.array([1.0, -1.0])


def _tunix_loss(model, old_logp, epsilon):
    example = common.TrainExample(prompt_ids=PROMPT, prompt_mask=PROMPT != 0, completion_ids=REPLY,
                                  completion_mask=jnp.ones_like(REPLY), advantages=ADV,
                                  ref_per_token_logps=None, old_per_token_logps=old_logp)
    algo = GRPOConfig(num_generations=2, beta=0.0, epsilon=epsilon)
    algo.temperature = 1.0
    return algo_core.grpo_loss_fn(model, example, algo, pad_id=0, eos_id=1)


def _logp(model):
    return jnp.take_along_axis(jax.nn.log_softmax(model.logits[...][:3]), REPLY.T, axis=1).T


def _clipped(logp, old, eps):
    ratio = jnp.exp(logp - old)
    per_token = jnp.maximum(-ADV[:, None] * ratio, -ADV[:, None] * jnp.clip(ratio, 1 - eps, 1 + eps))
    return per_token.mean(axis=1).mean()


def test_at_mu_1_tunix_ratio_is_one_and_epsilon_changes_nothing():
    model = TableLM(np.random.default_rng(0).normal(size=(4, 6)))
    grads = []
    for eps in (0.001, 0.2, 0.9):
        (loss, aux), grad = nnx.value_and_grad(lambda m: _tunix_loss(m, None, eps), has_aux=True)(model)
        assert float(aux["pg_clipfrac"]) == 0.0 and float(aux["is_ratio/max"]) == 1.0 == float(aux["is_ratio/min"])
        assert abs(float(loss)) < 1e-6  # −mean(A) under the default aggregation
        grads.append(np.asarray(grad["logits"][...]))
    assert np.abs(grads[0]).max() > 1e-3  # a real gradient, identical whatever ε
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-7)
    np.testing.assert_allclose(grads[0], grads[2], atol=1e-7)
    # ... and it is the plain policy gradient of −A·log π (mean per reply, then over replies)
    reinforce = nnx.grad(lambda m: -(ADV[:, None] * _logp(m)).mean(axis=1).mean())(model)
    np.testing.assert_allclose(grads[0], np.asarray(reinforce["logits"][...]), atol=1e-6)


def test_above_mu_1_tunix_loss_is_the_clipped_objective_and_clipped_tokens_get_no_gradient():
    model = TableLM(np.random.default_rng(0).normal(size=(4, 6)))
    now = _logp(model)
    old = now + jnp.array([[-0.5, 0.1, 0.0], [0.5, -0.1, 0.0]])
    loss, aux = _tunix_loss(model, old, 0.2)
    assert float(loss) == pytest.approx(float(_clipped(now, old, 0.2)), abs=1e-6)
    assert float(aux["pg_clipfrac"]) == pytest.approx(2 / 6)
    grad = np.asarray(jax.grad(_clipped)(now, old, 0.2))
    clipped = np.array([[True, False, False], [True, False, False]])  # ratio e^0.5 with A>0, e^-0.5 with A<0
    assert (grad[clipped] == 0).all() and (grad[~clipped] != 0).all()
    # a token that moved against its advantage (ratio 0.90 at A = +1) keeps its full gradient
    assert grad[0, 1] == pytest.approx(-float(jnp.exp(now - old)[0, 1]) / 6, rel=1e-5)


def test_aggregation_weights_per_token_as_part_02_teaches():
    mask = jnp.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    expected = {"sequence-mean-token-mean": (1 / 4, 1 / 12), "token-mean": (1 / 8, 1 / 8),
                "sequence-mean-token-scale": (1 / 12, 1 / 12)}
    for mode, (short, long) in expected.items():
        weight = jax.grad(lambda t: common.aggregate_loss(t, mask, mode))(jnp.zeros(mask.shape))
        assert float(weight[0, 0]) == pytest.approx(short) and float(weight[1, 0]) == pytest.approx(long)
    at_ratio_1 = -jnp.array([[1.0], [-1.0]]) * mask
    assert float(common.aggregate_loss(at_ratio_1, mask, "sequence-mean-token-mean")) == 0.0
    assert float(common.aggregate_loss(at_ratio_1, mask, "token-mean")) == pytest.approx(0.5)


def test_group_std_inflates_small_differences_and_drgrpo_does_not():
    close, mixed = np.array([0.80, 0.81, 0.82, 0.83]), np.array([0.2, 0.2, 0.9, 0.9])
    a_close, a_mixed = algo_core.compute_advantages(close, 4), algo_core.compute_advantages(mixed, 4)
    assert np.abs(a_close).max() == pytest.approx(1.16, abs=0.01)  # all right: tiny differences, full-size push
    assert np.abs(a_mixed).max() == pytest.approx(0.87, abs=0.01)  # half right: a smaller push than that
    d_close = np.asarray(algo_core.compute_drgrpo_advantages(close, 4))
    d_mixed = np.asarray(algo_core.compute_drgrpo_advantages(mixed, 4))
    assert np.abs(d_close).max() == pytest.approx(0.015) and np.abs(d_mixed).max() == pytest.approx(0.35)


def test_learning_rate_ratios_part_02_prints():
    tpu = TrainingConfig.for_profile("tpu")
    assert tpu.sft_learning_rate / tpu.learning_rate == pytest.approx(6.67, abs=0.01)
    assert tpu.learning_rate / 3e-6 == pytest.approx(10)
    text = (NOTEBOOKS / "02_grpo_config.py").read_text()
    assert "3,364 (3,738 batches × 0.9)" in text and int(3738 * 0.9) == 3364  # Tunix notebook's MAX_STEPS
    assert TrainingConfig().num_iterations == 1 and all(TrainingConfig.for_profile(p).num_iterations == 1
                                                        for p in ("smoke", "cpu", "tpu"))


# --- part 03: the rewards as the code pays them ---------------------------------------------
def test_calibration_pays_nearly_every_reply_and_annealing_is_not_the_same_money():
    from course_utils.reward_analysis import SAMPLE_PROBLEM, SAMPLE_REPLIES
    from course_utils.rewards import annealed_weights, calibration_reward, composite_reward

    paid = {n: calibration_reward(r, SAMPLE_PROBLEM.answer) for n, r in SAMPLE_REPLIES.items()}
    assert [n for n, v in paid.items() if v != 1.0] == ["over-confident and wrong"]
    assert annealed_weights(TrainingConfig(), 0)["calibration"] == pytest.approx(0.15)
    assert annealed_weights(TrainingConfig.for_profile("tpu"), 0)["calibration"] == pytest.approx(0.05)
    wrong = SAMPLE_REPLIES["arithmetic slip"]
    static = composite_reward(wrong, SAMPLE_PROBLEM.solution, config=TrainingConfig()).total
    step0 = composite_reward(wrong, SAMPLE_PROBLEM.solution, config=TrainingConfig(), step=0).total
    assert step0 - static == pytest.approx(0.15, abs=1e-6)  # a wrong reply gains the calibration weight


def test_wrong_never_outscores_right_on_correctness_but_can_in_the_composite():
    from course_utils.reward_analysis import SAMPLE_PROBLEM, SAMPLE_REPLIES
    from course_utils.rewards import composite_reward, correctness_reward, is_correct

    q, gold = SAMPLE_PROBLEM.question, SAMPLE_PROBLEM.solution
    scores = {n: (is_correct(r, gold), correctness_reward(r, gold, "easy", q)) for n, r in SAMPLE_REPLIES.items()}
    assert max(s for ok, s in scores.values() if not ok) == 0.0 < 0.7 <= min(s for ok, s in scores.values() if ok)

    def total(reply, profile, step):
        return composite_reward(reply, gold, config=TrainingConfig.for_profile(profile), step=step, question=q).total

    bare_right, tidy_wrong = "<answer>72</answer>", SAMPLE_REPLIES["misread the question"]
    assert is_correct(bare_right, gold) and not is_correct(tidy_wrong, gold)
    wrong0, right0 = total(tidy_wrong, "cpu", 0), total(bare_right, "cpu", 0)
    assert wrong0 > right0 and (wrong0, right0) == pytest.approx((0.585, 0.480), abs=1e-3)
    assert total(tidy_wrong, "cpu", None) == pytest.approx(total(bare_right, "cpu", None), abs=1e-6)  # 0.435 each
    assert all(total(bare_right, "tpu", s) > total(tidy_wrong, "tpu", s) for s in (None, 0, 499))


def _course_tokenizer():
    from course_utils.model import cache_dir
    from course_utils.tokenizer import load_sentencepiece

    found = sorted((cache_dir() / "converted").glob("*/tokenizer.model"))
    if not found:
        pytest.skip("the converted Gemma 3 270M (its tokenizer) is not cached here")
    return load_sentencepiece(found[0])


def test_verbosity_length_half_is_out_of_reach_of_the_profiles_replies():
    from course_utils.data import format_solution, load_splits
    from course_utils.rewards import VERBOSE_WORDS, verbosity

    assert VERBOSE_WORDS[0] == 400
    assert verbosity("<reasoning>" + "word " * 399 + "</reasoning><answer>1</answer>") == 0.0
    assert verbosity("<reasoning>" + " ".join(f"w{i}" for i in range(800)) + "</reasoning>") > 0.4
    sp = _course_tokenizer()
    spanning = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
                if re.search(r"\S\s+\S", sp.id_to_piece(i).replace("▁", " "))]
    assert spanning == [">▁</"]  # else a word costs at least one token: 160 tokens <= 160 words
    assert TrainingConfig.for_profile("cpu").max_generation_length < VERBOSE_WORDS[0]
    texts = [format_solution(e) for e in load_splits(TrainingConfig.for_profile("cpu"))["train"][:500]]
    rate = sum(len(t.split()) for t in texts) / sum(len(sp.encode(t)) for t in texts)
    assert rate == pytest.approx(0.43, abs=0.02)  # part 03's measured figure (synthetic targets)
    assert max(len(t.split()) / len(sp.encode(t)) for t in texts) * 512 < VERBOSE_WORDS[0]


def test_tunix_variant_configs_aggregate_as_part_02_tabulates():
    from tunix.rl.grpo.dapo_learner import DAPOConfig
    from tunix.rl.grpo.drgrpo_learner import DrGRPOConfig

    assert GRPOConfig().loss_agg_mode == "sequence-mean-token-mean"
    assert DAPOConfig().loss_agg_mode == "token-mean"
    dr = DrGRPOConfig()
    assert (dr.loss_agg_mode, dr.advantage_estimator) == ("sequence-mean-token-scale", "drgrpo")


def test_a_tied_group_has_no_policy_gradient_whatever_beta():
    """Part 02: lowering β creates no learning signal for a group whose replies tie; β·KL only
    pulls toward the reference."""
    tied = algo_core.compute_advantages(np.full(4, 0.7), 4)
    assert np.all(tied == 0)
    model = TableLM(np.random.default_rng(1).normal(size=(4, 6)))
    prompt, reply = jnp.full((4, 1), 2), jnp.array([[3, 4, 5], [5, 3, 4], [4, 4, 3], [5, 5, 5]])
    ref = jnp.take_along_axis(jax.nn.log_softmax(jnp.zeros((3, 6))), reply.T, axis=1).T  # a uniform reference

    def grad(beta):
        example = common.TrainExample(prompt_ids=prompt, prompt_mask=prompt != 0, completion_ids=reply,
                                      completion_mask=jnp.ones_like(reply), advantages=jnp.asarray(tied, jnp.float32),
                                      ref_per_token_logps=ref, old_per_token_logps=None)
        algo = GRPOConfig(num_generations=4, beta=beta, kl_loss_mode="low_var_kl")
        algo.temperature = 1.0
        g = nnx.grad(lambda m: algo_core.grpo_loss_fn(m, example, algo, pad_id=0, eos_id=1)[0])(model)
        return np.asarray(g["logits"][...])

    assert np.abs(grad(0.0)).max() == 0.0  # β = 0: nothing at all to learn from this group
    g_small, g_large = grad(0.04), grad(0.4)
    assert np.abs(g_small).max() > 0
    np.testing.assert_allclose(g_large, 10 * g_small, rtol=1e-4, atol=1e-8)  # only β·∇KL: it scales with β


def test_gsm8k_words_per_token_part_03_quotes(monkeypatch):
    """0.50 words per token on GSM8K targets, 0.72 at most over 500: 512 tokens stay under 400
    words. Needs GSM8K on disk (../shared/data/gsm8k or COURSE_GSM8K_DIR) and the tokenizer."""
    import os

    from course_utils.data import format_solution, load_splits

    folder = Path(os.environ.get("COURSE_GSM8K_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k")
    if not (folder / "train.jsonl").is_file():
        pytest.skip("no GSM8K on disk (set COURSE_GSM8K_DIR)")
    sp = _course_tokenizer()
    monkeypatch.setenv("COURSE_GSM8K_DIR", str(folder))
    train = load_splits(TrainingConfig.for_profile("cpu", data_source="local", train_examples=500))["train"]
    texts = [format_solution(e) for e in train]
    rates = [len(t.split()) / len(sp.encode(t)) for t in texts]
    mean = sum(len(t.split()) for t in texts) / sum(len(sp.encode(t)) for t in texts)
    assert mean == pytest.approx(0.50, abs=0.02) and max(rates) == pytest.approx(0.72, abs=0.02)
    assert max(rates) * TrainingConfig.for_profile("tpu").max_generation_length < 400


@pytest.mark.parametrize("part", ["01", "02", "03", "04", "05", "06", "07", "08"])
def test_each_questionnaire_has_one_answer_per_question(part):
    import jupytext

    (py,) = NOTEBOOKS.glob(f"{part}_*.py")
    text = "\n".join(c.source for c in jupytext.read(py).cells if c.cell_type == "markdown")
    questions, _, rest = text.partition("**Questionnaire**")[2].partition("<details><summary>Answers</summary>")
    answers = rest.partition("</details>")[0]
    count = lambda block: len(re.findall(r"^\d+\. ", block, re.M))
    assert count(questions) >= 4 and count(questions) == count(answers), py.name
