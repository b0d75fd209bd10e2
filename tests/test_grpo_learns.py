"""GRPO learns (issue 11 §2): through the course's own training path — `training.train_grpo`,
i.e. Tunix's RLCluster + GRPOLearner, a qwix LoRA actor, the course's rollout settings, reward
adapters and metrics — the tiny smoke model must raise a reward it can learn in a dozen steps,
and a control run with learning rate 0 (`control="lr0"`, the same code) must not.

The reward pays replies that start with one chosen token: one the untrained model samples
first about one time in seven. The test fails if the advantage's sign, the alignment of rewards
with completions, the LoRA update or the optimiser's wiring (e.g. a learning rate of 0) breaks.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from course_utils import training
from course_utils.config import TrainingConfig
from course_utils.data import Example, build_prompt

STEPS = 12
WINDOW = 4  # steps averaged at the start and at the end of a run
MARGIN = 0.08  # rollout-reward gain the trained run must reach and the control must not


def _first_token_probabilities(model, tokenizer, prompt: str, config: TrainingConfig) -> np.ndarray:
    """The policy's sampling distribution of the first reply token: softmax(logits / τ) over its
    `top_k` most likely tokens, 0 elsewhere (what the rollout samples from)."""
    from course_utils.generate import forward_logits

    ids = [tokenizer.bos_id()] + list(tokenizer.encode(prompt))
    logits = np.asarray(forward_logits(model, np.array([ids])), np.float64)[0, -1] / config.temperature
    top = np.argsort(logits)[::-1][: config.top_k]
    p = np.zeros_like(logits)
    p[top] = np.exp(logits[top] - logits[top].max())
    return p / p.sum()


def _rewards(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics_grpo.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    return [r["reward_mean"] for r in rows]


@pytest.mark.slow
def test_grpo_raises_a_learnable_reward_and_the_lr0_control_does_not(tmp_path, tiny_loaded):
    import jax

    from course_utils.env import make_mesh
    from course_utils.lora import apply_lora

    config = TrainingConfig.for_profile(
        "smoke", max_steps=STEPS, num_generations=16, global_batch_size=2, mini_batch_size=2, micro_batch_size=2,
        beta=0.0, learning_rate=1e-2, warmup_ratio=0.0, temperature=1.0, max_prompt_length=80,
        max_generation_length=4, cache_size=84, anneal_reward_weights=False, checkpoint_every=1000,
    )
    model, tokenizer = tiny_loaded.model, tiny_loaded.tokenizer
    mesh = make_mesh()
    jax.set_mesh(mesh)
    problem = Example(question="What is 2 + 3?", solution="2 + 3 = <<2+3=5>>5\n#### 5", answer="5",
                      difficulty="easy", source="test")
    prompt = build_prompt(problem.question)
    before = _first_token_probabilities(model, tokenizer, prompt, config)
    target = int(min(np.flatnonzero(before), key=lambda t: abs(before[t] - 0.14)))
    piece = tokenizer.decode([target])
    assert piece.strip(), "the chosen first token must decode to visible text"

    def starts_with_target(prompts, completions, answer, **kwargs):
        return [1.0 if c.startswith(piece) else 0.0 for c in completions]

    results = {}
    for control in (None, "lr0"):
        run_config = dataclasses.replace(config, control=control)
        actor = apply_lora(model, run_config, mesh)
        run_dir = tmp_path / str(control)
        training.train_grpo(run_config, actor, model, tokenizer, [problem], run_dir, mesh,
                            deadline=training.Deadline(None), reward_fns=[starts_with_target])
        rewards = _rewards(run_dir)
        after = _first_token_probabilities(actor, tokenizer, prompt, config)
        results[control] = (float(np.mean(rewards[-WINDOW:]) - np.mean(rewards[:WINDOW])), after[target], rewards)

    gain, p_after, rewards = results[None]
    control_gain, control_p, control_rewards = results["lr0"]
    report = (f"target {piece!r}: p {before[target]:.3f} → {p_after:.3f} (control {control_p:.3f}); "
              f"reward gain {gain:+.3f} {np.round(rewards, 3).tolist()}, "
              f"control {control_gain:+.3f} {np.round(control_rewards, 3).tolist()}")
    print(report)
    assert gain >= MARGIN and control_gain < MARGIN, report
    # the policy itself moved: the rewarded first token became much more likely, and lr 0 left it as it was
    assert p_after > 1.5 * before[target], report
    assert control_p == pytest.approx(before[target], rel=1e-4), report
