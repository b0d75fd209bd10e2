"""Hand the trained model over (part 08): a merged Hugging Face folder and a Tunix LoRA checkpoint.

`export_all` writes both under ``<run_dir>/export/``: ``hf/`` (the LoRA merged into the base
weights by Tunix's ``save_lora_merged_model_as_safetensors``; transformers loads it as
``Gemma3ForCausalLM``, Tunix with its safetensors loader) and ``tunix/lora/`` (the LoRA weights as
Tunix's `CheckpointManager` writes them, plus ``adapter_config.json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from course_utils.tokenizer import BOS_ID, END_OF_TURN, EOS_TOKENS, PAD_ID, START_OF_TURN
from course_utils.vocab import is_trimmed

EXPORT_DIR = "export"
# Export forms and the folder each is written to under export/.
HF_DIR, TUNIX_LORA_DIR = "hf", "tunix_lora"
FORM_PATHS = {HF_DIR: "hf", TUNIX_LORA_DIR: "tunix/lora"}
GEMMA_TERMS_URL = "https://ai.google.dev/gemma/terms"
BASE_MODEL_IDS = {"gemma3-270m": "google/gemma-3-270m", "gemma3-1b-it": "google/gemma-3-1b-it", "tiny": None}
# Gemma's chat template (system text goes at the top of the first user turn, as in Gemma 3's own).
CHAT_TEMPLATE = (
    "{{ bos_token }}{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] ~ '\\n\\n' -%}"
    "{%- else -%}{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' ~ role ~ '\\n' ~ (ns.system if role == 'user' else '') ~ (message['content'] | trim)"
    " ~ '<end_of_turn>\\n' }}{%- if role == 'user' -%}{%- set ns.system = '' -%}{%- endif -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
# generation_config.json of every Hugging Face folder the course writes (part 04's converted
# GGUF, part 08's export): greedy, stopping at <eos> or <end_of_turn>.
GENERATION_CONFIG = {"bos_token_id": BOS_ID, "eos_token_id": list(EOS_TOKENS), "pad_token_id": PAD_ID, "do_sample": False}


def lora_rank(model: Any) -> int | None:
    """The LoRA rank r of the model (its B matrices' first axis); None without LoRA (part 08)."""
    from flax import nnx

    ranks = {int(v.shape[0]) for path, v in nnx.iter_graph(model)
             if isinstance(v, nnx.LoRAParam) and str(path[-1]).endswith("_lora_b")}
    if len(ranks) > 1:
        raise ValueError(f"the LoRA layers have different ranks {sorted(ranks)}")
    return ranks.pop() if ranks else None


def hf_state_dict(model: Any, model_config: Any, dtype: str = "float32") -> dict[str, np.ndarray]:
    """The base weights of a Tunix Gemma 3 (LoRA left out) under Hugging Face names and layouts.

    The inverse of Tunix's safetensors loader mapping: einsum weights (heads, in, head_dim) become
    (heads·head_dim, in) matrices, Linear kernels are transposed; the output embedding is tied.
    """
    import jax
    import ml_dtypes

    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}.get(dtype)
    if np_dtype is None:
        raise ValueError(f"dtype={dtype!r}: choose float32, bfloat16 or float16")
    out: dict[str, np.ndarray] = {}

    def put(name: str, variable: Any, layout: Any = lambda w: w) -> None:
        array = np.asarray(jax.device_get(variable[...]), dtype=np.float32)
        out[name] = np.ascontiguousarray(layout(array).astype(np_dtype))

    def proj(w: np.ndarray) -> np.ndarray:  # (heads, in, head_dim) -> (heads*head_dim, in)
        return w.transpose(0, 2, 1).reshape(-1, w.shape[1])

    norms = {"pre_attention_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
             "pre_ffw_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
    put("model.embed_tokens.weight", model.embedder.input_embedding)
    put("model.norm.weight", model.final_norm.scale)
    for i, layer in enumerate(model.layers):
        pre, attn = f"model.layers.{i}", layer.attn
        for ours, theirs in norms.items():
            put(f"{pre}.{theirs}.weight", getattr(layer, ours).scale)
        put(f"{pre}.self_attn.q_norm.weight", attn._query_norm.scale)
        put(f"{pre}.self_attn.k_norm.weight", attn._key_norm.scale)
        put(f"{pre}.self_attn.q_proj.weight", attn.q_einsum.w, proj)
        put(f"{pre}.self_attn.k_proj.weight", attn.kv_einsum.w, lambda w: proj(w[0]))
        put(f"{pre}.self_attn.v_proj.weight", attn.kv_einsum.w, lambda w: proj(w[1]))
        o_proj = attn.attn_vec_einsum.w  # (heads, head_dim, out) -> (out, heads*head_dim)
        put(f"{pre}.self_attn.o_proj.weight", o_proj, lambda w: w.reshape(-1, w.shape[2]).T)
        for name in ("gate_proj", "up_proj", "down_proj"):
            put(f"{pre}.mlp.{name}.weight", getattr(layer.mlp, name).kernel, np.transpose)
    return out


def hf_config(model_config: Any, dtype: str = "float32") -> dict[str, Any]:
    """`config.json` of `Gemma3ForCausalLM` (``gemma3_text``) for a Tunix Gemma 3 `ModelConfig`
    (part 08; part 04's GGUF conversion writes it too)."""
    from tunix.models.gemma3.model import GEMMA3_ATTENTION_PATTERN, AttentionType, QueryPreAttentionNormalisation

    c = model_config
    if c.vision_config is not None:
        raise ValueError("only text-only Gemma 3 exports to gemma3_text; build the model with text_only=True")
    if c.local_scale_factor != 1.0:
        raise ValueError(f"local RoPE scale factor {c.local_scale_factor} has no transformers equivalent")
    pattern = GEMMA3_ATTENTION_PATTERN
    layer_types = ["full_attention" if pattern[i % len(pattern)] == AttentionType.GLOBAL else "sliding_attention"
                   for i in range(c.num_layers)]
    scalar = (c.head_dim if c.query_pre_attn_norm == QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_HEAD_DIM
              else c.embed_dim // c.num_heads)
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": c.num_embed,
        "hidden_size": c.embed_dim,
        "intermediate_size": c.hidden_dim,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "rope_theta": float(c.global_base_frequency),
        "rope_local_base_freq": float(c.local_base_frequency),
        "rope_scaling": None if c.global_scale_factor == 1.0 else {"rope_type": "linear", "factor": float(c.global_scale_factor)},
        "sliding_window": c.sliding_window_size,
        "sliding_window_pattern": len(pattern),
        "layer_types": layer_types,
        "query_pre_attn_scalar": scalar,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_bidirectional_attention": False,
        "max_position_embeddings": 131072 if c.global_scale_factor > 1 else 32768,
        "tie_word_embeddings": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": list(EOS_TOKENS),
        "pad_token_id": PAD_ID,
        "torch_dtype": dtype,
        "dtype": dtype,
        "use_cache": True,
    }


def sentencepiece_bytes(tokenizer: Any) -> bytes:
    """The serialized model of a SentencePieceProcessor (or of Tunix's adapter around one)."""
    for candidate in (tokenizer, getattr(tokenizer, "_tokenizer", None), getattr(tokenizer, "tokenizer", None)):
        serialize = getattr(candidate, "serialized_model_proto", None)
        if callable(serialize):
            data = serialize()
            if data:
                return bytes(data)
    raise ValueError(f"cannot get a SentencePiece model out of {type(tokenizer).__name__}: pass the "
                     "sentencepiece.SentencePieceProcessor that load_model returned")


def check_full_vocabulary(tokenizer: Any, model_config: Any = None) -> None:
    """Refuse a model with a trimmed vocabulary (`config.vocab_trim`): no other tool can use it."""
    rows = getattr(model_config, "num_embed", None)
    pieces = getattr(tokenizer, "get_piece_size", None)
    if is_trimmed(tokenizer) or (rows is not None and callable(pieces) and rows != pieces()):
        raise ValueError(
            "this model has a trimmed vocabulary (vocab_trim): export the full-vocabulary model instead. "
            "Load the base with load_model(config, full_vocabulary=True) and put the trained LoRA on it "
            "(evaluation.load_trained_model(config, checkpoint, base=...)), as part 08 does."
        )


def tokenizer_files(tokenizer: Any) -> dict[str, bytes]:
    """``tokenizer.model``, ``tokenizer_config.json`` (adds BOS, chat template) and
    ``special_tokens_map.json`` for transformers, from a SentencePiece tokenizer or its bytes
    (part 08; part 04's GGUF conversion writes them too)."""
    special = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
              **special, "additional_special_tokens": [START_OF_TURN, END_OF_TURN],
              "chat_template": CHAT_TEMPLATE, "model_max_length": 32768, "padding_side": "left",
              "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False}
    return {
        "tokenizer.model": tokenizer if isinstance(tokenizer, bytes) else sentencepiece_bytes(tokenizer),
        "tokenizer_config.json": (json.dumps(config, indent=2) + "\n").encode(),
        "special_tokens_map.json": (json.dumps({**special, "additional_special_tokens":
                                                [START_OF_TURN, END_OF_TURN]}, indent=2) + "\n").encode(),
    }


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Write a folder under a hidden name and rename it into place when complete."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:6]}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def write_hf_files(folder: Path, tensors: Mapping[str, np.ndarray], model_config: Any,
                   tokenizer: Any, dtype: str = "float32", extra: Mapping[str, str] | None = None,
                   ) -> None:
    """``model.safetensors`` (Hugging Face names), ``config.json``, ``generation_config.json``, the
    tokenizer files and `extra` {name: text} into `folder` (parts 04 and 08 write theirs here)."""
    from safetensors.numpy import save_file

    save_file(dict(tensors), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config(model_config, dtype), indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    for name, data in tokenizer_files(tokenizer).items():
        (folder / name).write_bytes(data)
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)


def save_hf(model: Any, tokenizer: Any, model_config: Any, out_dir: str | os.PathLike, *,
            config: Any = None, dtype: str = "float32", model_card: str | None = None) -> Path:
    """Write a transformers-loadable Gemma 3 folder with the model's LoRA merged in (part 08):
    `write_hf_files`' files and the model card as ``README.md``.

    The base weights are written first; Tunix's ``save_lora_merged_model_as_safetensors`` adds
    (α / r)·A·B to each adapted weight (α and r from `config`) and copies the other files.
    """
    from tunix.models.gemma3 import params as gemma_params

    check_full_vocabulary(tokenizer, model_config)
    rank = lora_rank(model)
    if rank is not None and (config is None or config.lora_rank != rank):
        wanted = getattr(config, "lora_rank", None)
        raise ValueError(f"the model's LoRA rank is {rank} but config.lora_rank is {wanted}: pass the "
                         "run's own config (load_run_config)")
    hf_config(model_config, dtype)  # refuses what transformers cannot load, before any writing
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".base-", dir=Path(out_dir).parent) as base, \
            staged_dir(out_dir) as tmp:
        card = {"README.md": model_card} if model_card else None
        write_hf_files(Path(base) if rank else tmp, hf_state_dict(model, model_config, dtype),
                       model_config, tokenizer, dtype, card)  # the base weights, then Tunix merges
        if rank:
            alpha = config.lora_alpha
            gemma_params.save_lora_merged_model_as_safetensors(base, str(tmp), model, rank, alpha)
    return Path(out_dir)


def save_tunix_lora(model: Any, out_dir: str | os.PathLike, config: Any, *, step: int = 0) -> Path:
    """The LoRA weights as Tunix's `CheckpointManager` writes them, in
    ``<out_dir>/<step>/model_params``, and ``adapter_config.json`` (part 08). Returns the
    ``model_params`` folder."""
    from tunix.sft.checkpoint_manager import CheckpointManager

    rank = lora_rank(model)
    if rank is None:
        raise ValueError("the model has no LoRA layers: nothing to save as an adapter (export the hf/ folder).")
    adapter = {"format": "tunix-lora (Orbax PyTree of nnx.state(model, nnx.LoRAParam))",
               "step": int(step), "rank": rank, "alpha": float(config.lora_alpha),
               "base_model": BASE_MODEL_IDS.get(config.model), "course_model": config.model}
    with staged_dir(out_dir) as tmp:
        manager = CheckpointManager(str(tmp))
        try:
            manager.save(int(step), model, save_only_lora_params=True, force=True)
        finally:
            manager.close()
        (tmp / "adapter_config.json").write_text(json.dumps(adapter, indent=2) + "\n")
    return Path(out_dir) / str(int(step)) / "model_params"


def load_tunix_lora(lora_model: Any, path: str | os.PathLike) -> Any:
    """Load LoRA weights (`save_tunix_lora`'s or part 06's checkpoints) into a LoRA model of the
    same rank with `checkpoints.restore_lora`. `path`: the checkpoint folder (newest step), a
    ``<step>`` folder or its ``model_params``."""
    from course_utils.checkpoints import latest_checkpoint, restore_lora

    path = Path(path)
    path = path.parent if path.name == "model_params" else path
    root, step = (path.parent, int(path.name)) if path.name.isdigit() else (path, None)
    if step is None and latest_checkpoint(root) is None:
        raise FileNotFoundError(f"no LoRA checkpoint (<step>/model_params) under {root}")
    restore_lora(lora_model, root, step)
    return lora_model


def _transformers_model(folder: str | os.PathLike) -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError:
        raise ImportError("checking the export with transformers needs PyTorch: `pip install torch` (CPU build is "
                          "enough; on Kaggle it is preinstalled) and transformers") from None
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return torch, model.eval()


def transformers_logits(folder: str | os.PathLike, tokens: Any) -> np.ndarray:
    """Logits [batch, length, vocab] of the exported folder run by transformers in float32 on CPU."""
    torch, model = _transformers_model(folder)
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


def transformers_generate(folder: str | os.PathLike, messages: Sequence[Mapping[str, str]], max_new_tokens: int = 64) -> str:
    """The exported model's greedy reply to a chat, through transformers' own tokenizer, chat
    template and generation config."""
    torch, model = _transformers_model(folder)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    inputs = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def export_all(model: Any, tokenizer: Any, model_config: Any, config: Any,
               run_dir: str | os.PathLike, *, step: int = 0, dtype: str = "float32",
               model_card: str | None = None) -> dict[str, Path]:
    """Write ``export/hf`` and (for a LoRA model) ``export/tunix/lora`` under `run_dir` (part 08);
    returns {form: folder}."""
    root = Path(run_dir) / EXPORT_DIR
    folders = {HF_DIR: save_hf(model, tokenizer, model_config, root / FORM_PATHS[HF_DIR],
                               config=config, dtype=dtype, model_card=model_card)}
    if lora_rank(model) is not None:
        save_tunix_lora(model, root / FORM_PATHS[TUNIX_LORA_DIR], config, step=step)
        folders[TUNIX_LORA_DIR] = root / FORM_PATHS[TUNIX_LORA_DIR]
    return folders
