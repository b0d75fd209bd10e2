"""The model card (README.md) of an export (part 08): every number comes from part 07's saved
results or the run's configuration; it carries Hugging Face metadata and Gemma's terms."""

from __future__ import annotations

import os
from typing import Any

from course_utils.evaluation import load_results, markdown_table
from course_utils.export import BASE_MODEL_IDS, GEMMA_TERMS_URL

CONFIG_FIELDS = ("profile", "model", "lora_rank", "lora_alpha", "num_generations", "beta", "seed",
                 "epsilon", "learning_rate", "max_steps", "sft_steps", "sft_learning_rate",
                 "temperature", "global_batch_size", "max_prompt_length", "max_generation_length",
                 "format_reward_weight", "coherence_reward_weight", "correctness_reward_weight")


def build_model_card(config: Any, results: Any = None, *, repo_id: str | None = None,
                     hardware: str | None = None) -> str:
    """The Markdown model card (part 08). `results`: part 07's, as `EvalResult`s or the run
    directory (none: "not evaluated yet"); `hardware` defaults to what the evaluation recorded."""
    if isinstance(results, (str, os.PathLike)):
        results = load_results(results)
    evaluation = "Not evaluated yet: run part 07 (`07_evaluation`), then rebuild this card."
    if results:
        settings = results[-1].settings
        hardware = hardware or settings.get("hardware") or "unrecorded hardware"
        evaluation = (
            f"GSM8K-style test problems, {len(results[-1].rows)} per model, greedy decoding, at "
            f"most {settings.get('max_new_tokens', '?')} new tokens; 95 % bootstrap intervals in "
            f"brackets; measured on {hardware}.\n\n{markdown_table(results)}\n\nStrict accuracy: "
            "the number inside `<answer>` is right. Lenient: the last number anywhere in the reply "
            "is right. Format: exactly one reasoning block then one answer block.")
    base = BASE_MODEL_IDS.get(config.model)
    rows = "\n".join(f"| {f} | {getattr(config, f)} |" for f in CONFIG_FIELDS if hasattr(config, f))
    tiny = "> **Test artefact**: a tiny random model that checks the pipeline; do not use it.\n\n"
    return f"""---
license: gemma
{f"base_model: {base}" if base else ""}
tags: [gemma3, grpo, lora, tunix, reasoning, gsm8k]
---

# {repo_id.split("/")[-1] if repo_id else f"gemma3-grpo-reasoning-{config.profile}"}

{f"Gemma 3 ({base})" if base else "A Gemma 3 model"} fine-tuned to reason step by step on
grade-school maths: LoRA supervised warm-up, then GRPO with Google's Tunix on JAX. It answers as
`<reasoning>…</reasoning><answer>…</answer>`. The LoRA weights are merged into the base weights.

{tiny if config.model == "tiny" else ""}## Evaluation

{evaluation}

## Training

| setting | value |
|---|---|
{rows}
| config fingerprint | {config.fingerprint()} |

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{repo_id or 'path/to/export/hf'}")
model = AutoModelForCausalLM.from_pretrained("{repo_id or 'path/to/export/hf'}")
messages = [{{"role": "user", "content": "Tom has 3 boxes of 12 eggs. How many eggs?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=256)[0]))
```

Pass the course's instruction (reason inside `<reasoning>`, answer inside `<answer>`) as a
`system` message: the chat template puts it at the top of the user turn, as the course does.

## Licence and limitations

Gemma is provided under and subject to the Gemma Terms of Use found at {GEMMA_TERMS_URL}; this
derivative is distributed under the same terms, including the Gemma Prohibited Use Policy. A small
model trained briefly for teaching, it makes mistakes; its numbers hold for the settings stated.
"""
