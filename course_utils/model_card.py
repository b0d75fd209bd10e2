"""A model card (README.md) built from part 07's saved results and the run's configuration (part 08).

Every number in the card comes from ``<run_dir>/eval/results.json`` (written by
`course_utils.evaluation.save_results`) or from the `TrainingConfig`; nothing is typed by hand.
The card carries the Hugging Face metadata block (licence ``gemma``, base model, tags) and the
notice that Gemma's terms of use apply to the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from course_utils.evaluation import EvalResult, load_results, markdown_table
from course_utils.export import BASE_MODEL_IDS, GEMMA_TERMS_URL

CONFIG_ROWS = (
    ("model", "course model"), ("lora_rank", "LoRA rank r"), ("lora_alpha", "LoRA α"),
    ("num_generations", "GRPO group size G"), ("beta", "KL weight β"), ("epsilon", "clip ε"),
    ("learning_rate", "GRPO learning rate η"), ("max_steps", "GRPO steps"), ("sft_steps", "SFT steps"),
    ("sft_learning_rate", "SFT learning rate"), ("global_batch_size", "prompts per step"),
    ("max_prompt_length", "max prompt tokens"), ("max_generation_length", "max new tokens"),
    ("temperature", "sampling temperature τ"), ("format_reward_weight", "reward weight: format"),
    ("coherence_reward_weight", "reward weight: coherence"),
    ("correctness_reward_weight", "reward weight: correctness"), ("seed", "seed"),
)


def _load_results(results: Any) -> list[Any]:
    if results is None:
        return []
    if isinstance(results, (str, os.PathLike)):
        path = Path(results)
        if path.is_dir():
            return load_results(path)
        data = json.loads(path.read_text())
        return [EvalResult.from_dict(r) for r in data.get("results", [])]
    return list(results)


def build_model_card(config: Any, results: Any = None, *, repo_id: str | None = None,
                     hardware: str | None = None, trained_steps: dict[str, int] | None = None,
                     base_model: str | None = None) -> str:
    """The Markdown model card (part 08).

    `results`: part 07's results (a list of `EvalResult`, the run directory, or the path of
    ``results.json``); without them the card says the model was not evaluated. `hardware`
    defaults to what the evaluation recorded. `trained_steps`, e.g. ``{"sft": 80, "grpo": 40}``.
    """
    evaluated = _load_results(results)
    base = base_model or BASE_MODEL_IDS.get(getattr(config, "model", ""), None)
    name = repo_id.split("/")[-1] if repo_id else f"gemma3-grpo-reasoning-{config.profile}"
    if hardware is None and evaluated:
        hardware = evaluated[-1].settings.get("hardware")
    meta = ["---", "license: gemma", "library_name: transformers", "pipeline_tag: text-generation"]
    if base:
        meta.append(f"base_model: {base}")
    meta += ["tags:", "  - gemma3", "  - grpo", "  - lora", "  - tunix", "  - reasoning", "  - gsm8k", "---", ""]
    lines = [
        f"# {name}",
        "",
        f"{'Gemma 3 (' + base + ')' if base else 'A Gemma 3 model'} fine-tuned to reason step by step on "
        "grade-school maths: LoRA supervised warm-up, then GRPO (Group Relative Policy Optimisation) with "
        "Google's Tunix on JAX. It answers as `<reasoning>…</reasoning><answer>…</answer>`. The LoRA "
        "weights are merged into the base weights.",
        "",
    ]
    if config.model == "tiny":
        lines += ["> **Test artefact.** This is the course's *smoke* profile: a tiny, randomly initialised "
                  "model used to check the pipeline. It has learned nothing; do not use it.", ""]
    lines += ["## Evaluation", ""]
    if evaluated:
        r = evaluated[-1]
        settings = r.settings
        lines += [
            f"GSM8K-style test problems, {len(r.rows)} per model, {settings.get('decoding', 'greedy')} decoding, "
            f"at most {settings.get('max_new_tokens', '?')} new tokens; 95 % bootstrap intervals in brackets; "
            f"measured on {hardware or 'unrecorded hardware'}.",
            "",
            markdown_table(evaluated),
            "",
            "Strict accuracy: the number inside `<answer>` is right. Lenient: the last number anywhere in the "
            "reply is right. Format: exactly one reasoning block then one answer block.",
            "",
        ]
    else:
        lines += ["Not evaluated yet: run part 07 (`07_evaluation`) of the course, then rebuild this card.", ""]
    lines += ["## Training", "", "| setting | value |", "|---|---|"]
    for field, label in CONFIG_ROWS:
        if hasattr(config, field):
            lines.append(f"| {label} | {getattr(config, field)} |")
    if trained_steps:
        for stage, steps in trained_steps.items():
            lines.append(f"| {stage} steps completed | {steps} |")
    lines += [f"| profile | {config.profile} |", f"| config fingerprint | {config.fingerprint()} |", ""]
    lines += [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"tokenizer = AutoTokenizer.from_pretrained(\"{repo_id or 'path/to/export/hf'}\")",
        f"model = AutoModelForCausalLM.from_pretrained(\"{repo_id or 'path/to/export/hf'}\")",
        "messages = [{\"role\": \"user\", \"content\": \"Tom has 3 boxes of 12 eggs. How many eggs?\"}]",
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=256)[0]))",
        "```",
        "",
        "The course's prompt puts its instruction (reason inside `<reasoning>`, answer inside `<answer>`) "
        "at the top of the user turn: pass it as a `system` message and the chat template does that.",
        "",
        "## Licence and limitations",
        "",
        f"Gemma is provided under and subject to the Gemma Terms of Use found at {GEMMA_TERMS_URL}; "
        "this derivative is distributed under the same terms, including the Gemma Prohibited Use Policy. "
        "It is a small model trained briefly for teaching: it makes arithmetic and reasoning mistakes, "
        "and its numbers above hold for the problems and settings stated, nothing more.",
        "",
    ]
    return "\n".join(meta + lines)
