"""Hand the trained model over: merged Hugging Face folder, Tunix LoRA checkpoint, uploads (part 08).

Two forms, both written under ``<run_dir>/export/`` by `export_all`:

* ``hf/`` — the LoRA merged into the base weights, as a Hugging Face folder that
  ``transformers.AutoModelForCausalLM.from_pretrained`` loads as a Gemma 3 causal LM
  (``model.safetensors``, ``config.json`` of type ``gemma3_text``, ``generation_config.json``
  stopping at ``<eos>``/``<end_of_turn>`` = [1, 106], SentencePiece ``tokenizer.model`` with a
  ``tokenizer_config.json`` that adds BOS, ``README.md`` model card). Tunix loads the same
  folder with its safetensors loader (`course_utils.model.load_checkpoint_dir`, i.e.
  ``gemma3.params_safetensors.create_model_from_safe_tensors``), as it loads the cpu profile's
  base model: the merged model in Tunix needs no second format.
* ``tunix/lora/`` — only the LoRA weights, exactly as Tunix's own `CheckpointManager` writes
  them (``<step>/model_params``, an Orbax PyTree of ``nnx.state(model, nnx.LoRAParam)``) plus
  ``adapter_config.json`` (rank, α, base model). The community's restore snippet —
  ``StandardCheckpointer().restore(f"{path}/{step}/model_params", target=abstract_lora_state)`` —
  reads it as is. Small (megabytes); needs the base model to use.

`merge_lora` folds each LoRA pair into its weight: W' = W + (α / r) · A·B, shaped by the layer's
own einsum (Tunix's ``save_lora_merged_model_as_safetensors`` does the same but needs the base
model as an HF safetensors folder, which the TPU profile's Orbax download is not; the tests
check both agree where both apply).

Uploads (`upload_to_kaggle`, `upload_to_huggingface`) read their credentials with
`course_utils.env.get_secret`; without them they run as a dry run that lists each file, its
size and its destination. A token is never printed or written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from course_utils.env import get_secret
from course_utils.tokenizer import BOS_ID, END_OF_TURN, EOS_TOKENS, PAD_ID, START_OF_TURN
from course_utils.vocab import is_trimmed

EXPORT_DIR = "export"
# Export forms (the names `export_all` takes) and the folder each is written to under export/.
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


# ================================================================================================
# Merging LoRA into the base weights
# ================================================================================================

_LORA_SUFFIX_A, _LORA_SUFFIX_B = "_lora_a", "_lora_b"


def _plain(tree: Any) -> Any:
    """An nnx.State or nested mapping as plain nested dicts (keys as they are)."""
    from flax import nnx

    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def _flatten(tree: Mapping[Any, Any], prefix: tuple = ()) -> dict[tuple, Any]:
    out: dict[tuple, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def _unflatten(flat: Mapping[tuple, Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _norm_key(key: Any) -> Any:
    return int(key) if isinstance(key, str) and key.isdigit() else key


def _einsum_strings(model: Any) -> dict[tuple, str]:
    """Module path → einsum string of every `Einsum` module of the model."""
    from flax import nnx

    found = {}
    for path, node in nnx.iter_graph(model):
        text = getattr(node, "einsum_str", None)
        if isinstance(text, str) and isinstance(node, nnx.Module):
            found[tuple(_norm_key(k) for k in path)] = text
    return found


def lora_pairs(model: Any) -> dict[tuple, dict[str, Any]]:
    """The model's LoRA layers: {(module path…, weight name): {"a", "b", "einsum"}} (part 08).

    qwix names a weight's LoRA pair ``<weight>_lora_a`` / ``<weight>_lora_b`` next to it
    (``w`` of an Einsum, ``kernel`` of a Linear).
    """
    from flax import nnx

    flat = _flatten(_plain(nnx.state(model, nnx.LoRAParam)))
    einsums = _einsum_strings(model)
    pairs: dict[tuple, dict[str, Any]] = {}
    for path, value in flat.items():
        name = str(path[-1])
        for suffix, slot in ((_LORA_SUFFIX_A, "a"), (_LORA_SUFFIX_B, "b")):
            if name.endswith(suffix):
                module = tuple(_norm_key(k) for k in path[:-1])
                entry = pairs.setdefault(module + (name[: -len(suffix)],), {"einsum": einsums.get(module)})
                entry[slot] = value
    broken = [k for k, v in pairs.items() if "a" not in v or "b" not in v]
    if broken:
        raise ValueError(f"LoRA layers without both A and B matrices: {broken[:3]}")
    return pairs


def _lora_char(used: str) -> str:
    return next(c for c in "rRzZqQ" + "".join(map(chr, range(97, 123))) if c not in used)


def lora_delta(a: Any, b: Any, weight_shape: Sequence[int], einsum: str | None, scale: float) -> Any:
    """The update (α / r) · A·B of one LoRA pair, shaped like its weight (part 08).

    For an Einsum weight (``BTD,NDH->BTNH``) qwix factors the weight's dimensions into those it
    shares with the input (A) and the rest (B), so W' = einsum(A, B) over the weight's letters.
    For a Linear kernel (in, out) it is the plain matrix product A @ B.
    """
    import jax.numpy as jnp

    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if einsum:
        inputs, _ = einsum.replace(" ", "").split("->")
        lhs, rhs = inputs.split(",")
        if len(rhs) != len(weight_shape):
            raise ValueError(f"einsum {einsum!r} does not match weight shape {tuple(weight_shape)}")
        r = _lora_char(lhs + rhs)
        a_letters = "".join(c for c in rhs if c in lhs) + r
        b_letters = r + "".join(c for c in rhs if c not in lhs)
        delta = jnp.einsum(f"{a_letters},{b_letters}->{rhs}", a, b)
    else:
        delta = (a.reshape(-1, a.shape[-1]) @ b.reshape(b.shape[0], -1)).reshape(weight_shape)
    if tuple(delta.shape) != tuple(weight_shape):
        raise ValueError(f"LoRA update has shape {tuple(delta.shape)}, the weight {tuple(weight_shape)}")
    return delta * scale


def lora_rank(model: Any) -> int | None:
    """The LoRA rank r of the model (None without LoRA); all layers must share it."""
    ranks = {int(np.shape(p["a"])[-1]) for p in lora_pairs(model).values()}
    if len(ranks) > 1:
        raise ValueError(f"the LoRA layers have different ranks {sorted(ranks)}; merge them one by one")
    return ranks.pop() if ranks else None


def base_params(model: Any) -> dict[tuple, Any]:
    """Flat {path: array} of the model's ordinary weights (LoRA matrices left out)."""
    from flax import nnx

    state = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    return {tuple(_norm_key(k) for k in p): v for p, v in _flatten(_plain(state)).items()}


def merge_lora(model: Any, alpha: float | None = None, *, config: Any = None) -> dict[tuple, Any]:
    """The model's weights with every LoRA pair folded in, as flat {path: array} (part 08).

    α comes from `alpha` or ``config.lora_alpha``; r from the matrices. A model without LoRA
    returns its weights unchanged. Arrays keep their dtype and device placement.
    """
    import jax.numpy as jnp

    params = base_params(model)
    pairs = lora_pairs(model)
    if not pairs:
        return params
    if alpha is None:
        if config is None:
            raise ValueError("merge_lora needs LoRA's alpha: pass alpha=config.lora_alpha or config=config")
        alpha = config.lora_alpha
    rank = lora_rank(model)
    if config is not None and config.lora_rank != rank:
        raise ValueError(f"the model's LoRA rank is {rank} but config.lora_rank={config.lora_rank}: "
                         "load the run's own config (load_run_config) before merging")
    scale = float(alpha) / rank
    for path, pair in pairs.items():
        if path not in params:
            raise ValueError(f"LoRA layer {'.'.join(map(str, path))} has no base weight to merge into")
        weight = params[path]
        delta = lora_delta(pair["a"], pair["b"], np.shape(weight), pair["einsum"], scale)
        params[path] = (jnp.asarray(weight, jnp.float32) + delta).astype(weight.dtype)
    return params


def build_model(params: Mapping[tuple, Any], model_config: Any, mesh: Any = None) -> Any:
    """A plain Tunix Gemma 3 (no LoRA) holding `params` (flat or nested) (part 08)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from tunix.models.gemma3.model import Gemma3

    flat = params if all(isinstance(k, tuple) for k in params) else _flatten(params)
    abstract = nnx.eval_shape(lambda: Gemma3(model_config, rngs=nnx.Rngs(0)))
    target = _flatten(_plain(nnx.state(abstract)))
    target = {tuple(_norm_key(k) for k in p): v for p, v in target.items()}
    missing = sorted(set(target) - set(flat), key=str)
    extra = sorted(set(flat) - set(target), key=str)
    if missing or extra:
        raise ValueError(f"weights do not fit this model config: missing {missing[:3]}, unexpected {extra[:3]}")
    shardings = None
    if mesh is not None:
        shardings = {tuple(_norm_key(k) for k in p): s for p, s in
                     _flatten(_plain(nnx.get_named_sharding(nnx.state(abstract), mesh))).items()}
    values = {}
    for path, spec in target.items():
        value = flat[path]
        if tuple(np.shape(value)) != tuple(spec.shape):
            raise ValueError(f"{'.'.join(map(str, path))} has shape {np.shape(value)}, the model expects {spec.shape}")
        array = jnp.asarray(value, dtype=spec.dtype)
        values[path] = jax.device_put(array, shardings[path]) if shardings else array
    state = nnx.state(abstract)
    nnx.replace_by_pure_dict(state, _unflatten(_keys_like(values, _plain(state))))
    nnx.update(abstract, state)
    return abstract


def _keys_like(values: Mapping[tuple, Any], template: Mapping[Any, Any]) -> dict[tuple, Any]:
    """Re-key normalised paths with the template's own key types (int vs str layer indices)."""
    lookup = {tuple(_norm_key(k) for k in p): p for p in _flatten(template)}
    return {lookup[p]: v for p, v in values.items()}


def merged_model(model: Any, model_config: Any, alpha: float | None = None, *, config: Any = None, mesh: Any = None) -> Any:
    """A plain Gemma 3 whose weights are `model`'s with the LoRA merged in (part 08)."""
    return build_model(merge_lora(model, alpha, config=config), model_config, mesh)


# ================================================================================================
# Hugging Face format
# ================================================================================================


def _np(value: Any) -> np.ndarray:
    import jax

    return np.asarray(jax.device_get(value))


def hf_state_dict(params: Mapping[tuple, Any], model_config: Any, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Tunix Gemma 3 weights (flat {path: array}) under Hugging Face Gemma 3 names and layouts (part 08).

    The inverse of Tunix's safetensors loader mapping: einsum weights (heads, in, head_dim)
    become (heads·head_dim, in) projection matrices, Linear kernels are transposed, RMSNorm
    scales keep Gemma's "1 + w" convention (both libraries use it). The output embedding is tied.
    """
    import ml_dtypes

    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}.get(dtype)
    if np_dtype is None:
        raise ValueError(f"dtype={dtype!r}: choose float32, bfloat16 or float16")
    c = model_config
    out: dict[str, np.ndarray] = {}

    def put(name: str, array: Any) -> None:
        out[name] = np.ascontiguousarray(np.asarray(array, dtype=np.float32).astype(np_dtype))

    def proj(w: np.ndarray) -> np.ndarray:  # (heads, in, head_dim) -> (heads*head_dim, in)
        return w.transpose(0, 2, 1).reshape(-1, w.shape[1])

    flat = {tuple(_norm_key(k) for k in p): v for p, v in params.items()}
    norms = {"pre_attention_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
             "pre_ffw_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
    used = set()

    def get(*path: Any) -> np.ndarray:
        used.add(path)
        if path not in flat:
            raise ValueError(f"the model has no weight {'.'.join(map(str, path))}: is it a Gemma 3?")
        return _np(flat[path])

    put("model.embed_tokens.weight", get("embedder", "input_embedding"))
    put("model.norm.weight", get("final_norm", "scale"))
    for i in range(c.num_layers):
        pre = f"model.layers.{i}"
        for ours, theirs in norms.items():
            put(f"{pre}.{theirs}.weight", get("layers", i, ours, "scale"))
        put(f"{pre}.self_attn.q_norm.weight", get("layers", i, "attn", "_query_norm", "scale"))
        put(f"{pre}.self_attn.k_norm.weight", get("layers", i, "attn", "_key_norm", "scale"))
        if ("layers", i, "attn", "qkv_einsum", "w") in flat:
            q, k, v = get("layers", i, "attn", "qkv_einsum", "w")
        else:
            q = get("layers", i, "attn", "q_einsum", "w")
            k, v = get("layers", i, "attn", "kv_einsum", "w")
        put(f"{pre}.self_attn.q_proj.weight", proj(q))
        put(f"{pre}.self_attn.k_proj.weight", proj(k))
        put(f"{pre}.self_attn.v_proj.weight", proj(v))
        o = get("layers", i, "attn", "attn_vec_einsum", "w")  # (heads, head_dim, out)
        put(f"{pre}.self_attn.o_proj.weight", o.reshape(-1, o.shape[-1]).T)
        for name in ("gate_proj", "up_proj", "down_proj"):
            put(f"{pre}.mlp.{name}.weight", get("layers", i, "mlp", name, "kernel").T)
    left = sorted(set(flat) - used, key=str)
    if left:
        raise ValueError(f"weights with no Hugging Face counterpart (vision tower?): {left[:3]}; "
                         "only text-only Gemma 3 models are exported")
    return out


# generation_config.json of every Hugging Face folder the course writes (part 04's converted
# GGUF, part 08's export): greedy, stopping at <eos> or <end_of_turn>.
GENERATION_CONFIG = {"bos_token_id": BOS_ID, "eos_token_id": list(EOS_TOKENS), "pad_token_id": PAD_ID, "do_sample": False}


def hf_config(model_config: Any, dtype: str = "float32") -> dict[str, Any]:
    """`config.json` for `Gemma3ForCausalLM` (``model_type`` ``gemma3_text``) matching a Tunix
    Gemma 3 `ModelConfig` (part 08). Written with the field names transformers 4.5x and 5.x read.
    The one writer of config.json: part 04's GGUF conversion uses it too."""
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
    """The serialized SentencePiece model behind a tokenizer (a SentencePieceProcessor or Tunix's
    TokenizerAdapter around one)."""
    for candidate in (tokenizer, getattr(tokenizer, "_tokenizer", None), getattr(tokenizer, "tokenizer", None)):
        serialize = getattr(candidate, "serialized_model_proto", None)
        if callable(serialize):
            data = serialize()
            if data:
                return bytes(data)
    raise ValueError(f"cannot get a SentencePiece model out of {type(tokenizer).__name__}: pass the "
                     "sentencepiece.SentencePieceProcessor that load_model returned")


def check_full_vocabulary(tokenizer: Any, model_config: Any = None) -> None:
    """Refuse a model loaded with a trimmed vocabulary (`config.vocab_trim`, course_utils.vocab).

    Its embedding has only the course's rows, so no other tool could use it; LoRA never
    touches the embedding, so the same adapters apply to the full model, which is what to export.
    """
    rows = getattr(model_config, "num_embed", None)
    pieces = getattr(tokenizer, "get_piece_size", None)
    if is_trimmed(tokenizer) or (rows is not None and callable(pieces) and rows != pieces()):
        raise ValueError(
            "this model has a trimmed vocabulary (vocab_trim): export the full-vocabulary model instead. "
            "Load the base with load_model(config, full_vocabulary=True) and put the trained LoRA on it "
            "(evaluation.load_trained_model(config, checkpoint, base=...)), as part 08 does."
        )


def tokenizer_files(tokenizer: Any) -> dict[str, bytes]:
    """``tokenizer.model``, ``tokenizer_config.json`` (adds BOS, Gemma's chat template) and
    ``special_tokens_map.json`` for transformers' GemmaTokenizer. `tokenizer` is a SentencePiece
    tokenizer or its serialized model (bytes). The one writer of these files: part 04's GGUF
    conversion uses it too."""
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
def _staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Write a folder under a hidden temporary name and rename it into place at the end, so an
    interrupted export never leaves a half-written folder where a finished one was."""
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


def save_hf(params_or_model: Any, tokenizer: Any, model_config: Any, out_dir: str | os.PathLike, *,
            alpha: float | None = None, config: Any = None, dtype: str = "float32",
            model_card: str | None = None) -> Path:
    """Write a transformers-loadable Gemma 3 folder (part 08): the merged weights as
    ``model.safetensors``, ``config.json``, ``generation_config.json`` (eos [1, 106]), the
    tokenizer files and, when given, ``README.md``. `params_or_model` is a (LoRA) model — merged
    here with α from `alpha`/`config` — or flat weights from `merge_lora`."""
    from safetensors.numpy import save_file

    check_full_vocabulary(tokenizer, model_config)
    params = params_or_model if isinstance(params_or_model, Mapping) else merge_lora(params_or_model, alpha, config=config)
    tensors = hf_state_dict(params, model_config, dtype)
    with _staged_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(model_config, dtype), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
        for name, data in tokenizer_files(tokenizer).items():
            (tmp / name).write_bytes(data)
        if model_card:
            (tmp / "README.md").write_text(model_card)
    return Path(out_dir)


# ================================================================================================
# Tunix / Orbax checkpoints
# ================================================================================================


def save_tunix_lora(model: Any, out_dir: str | os.PathLike, *, step: int = 0, config: Any = None,
                    base_model: str | None = None) -> Path:
    """The LoRA weights as Tunix's `CheckpointManager` writes them: ``<out_dir>/<step>/model_params``
    (Orbax PyTree of ``nnx.state(model, nnx.LoRAParam)``) plus ``adapter_config.json`` (part 08).
    Returns the ``model_params`` folder."""
    from tunix.sft.checkpoint_manager import CheckpointManager

    if not lora_pairs(model):
        raise ValueError("the model has no LoRA layers: nothing to save as an adapter (export the hf/ folder).")
    rank = lora_rank(model)
    adapter = {
        "format": "tunix-lora (Orbax PyTree of nnx.state(model, nnx.LoRAParam))",
        "step": int(step), "rank": rank,
        "alpha": float(config.lora_alpha) if config is not None else None,
        "base_model": base_model or (BASE_MODEL_IDS.get(getattr(config, "model", ""), None) if config else None),
        "course_model": getattr(config, "model", None),
        "layers": sorted(".".join(map(str, p)) for p in lora_pairs(model)),
        "restore": "StandardCheckpointer().restore(f'{path}/{step}/model_params', target=abstract nnx.state(lora_model, nnx.LoRAParam))",
    }
    with _staged_dir(out_dir) as tmp:
        manager = CheckpointManager(str(tmp))
        try:
            manager.save(int(step), model, save_only_lora_params=True, force=True)
        finally:
            manager.close()
        (tmp / "adapter_config.json").write_text(json.dumps(adapter, indent=2) + "\n")
    return Path(out_dir) / str(int(step)) / "model_params"


def load_tunix_lora(lora_model: Any, path: str | os.PathLike) -> Any:
    """Load LoRA weights saved by `save_tunix_lora` or by part 06's training into a model that has
    LoRA layers of the same rank, with Tunix's ``CheckpointManager.maybe_restore(...,
    restore_only_lora_params=True)`` (`checkpoints.restore_lora`). `path` is the checkpoint
    folder (its newest step), a ``<step>`` folder or its ``model_params``."""
    from course_utils.checkpoints import latest_checkpoint, restore_lora

    path = Path(path)
    path = path.parent if path.name == "model_params" else path
    root, step = (path.parent, int(path.name)) if path.name.isdigit() else (path, None)
    if step is None and latest_checkpoint(root) is None:
        raise FileNotFoundError(f"no LoRA checkpoint (<step>/model_params) under {root}")
    restore_lora(lora_model, root, step)
    return lora_model


# ================================================================================================
# Checking an export with transformers (needs PyTorch)
# ================================================================================================


def _torch_and_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError:
        raise ImportError("checking the export with transformers needs PyTorch: `pip install torch` (CPU build is "
                          "enough; on Kaggle it is preinstalled) and transformers") from None
    return torch, transformers


def transformers_logits(folder: str | os.PathLike, tokens: Any) -> np.ndarray:
    """Logits [batch, length, vocab] of the exported folder run by transformers in float32 on CPU."""
    torch, transformers = _torch_and_transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


def transformers_generate(folder: str | os.PathLike, messages: Sequence[Mapping[str, str]], max_new_tokens: int = 64) -> str:
    """The exported model's greedy reply to a chat, through transformers' own tokenizer, chat
    template and generation config (stops at <eos> / <end_of_turn>)."""
    torch, transformers = _torch_and_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    inputs = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


# ================================================================================================
# Everything at once
# ================================================================================================


@dataclasses.dataclass
class ExportReport:
    """What `export_all` wrote: folders, files with sizes, seconds."""

    root: Path
    folders: dict[str, Path]
    seconds: dict[str, float]

    def files(self) -> list[tuple[str, int]]:
        return [(str(p.relative_to(self.root)), p.stat().st_size)
                for p in sorted(self.root.rglob("*")) if p.is_file()]

    def summary(self) -> str:
        lines = []
        for name, folder in self.folders.items():
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            lines.append(f"{name:<13} {folder}  ({_human(size)}, {self.seconds.get(name, 0):.1f} s)")
        return "\n".join(lines)


def export_all(model: Any, tokenizer: Any, model_config: Any, config: Any, run_dir: str | os.PathLike, *,
               step: int = 0, dtype: str = "float32", model_card: str | None = None,
               forms: Sequence[str] = (HF_DIR, TUNIX_LORA_DIR)) -> ExportReport:
    """Write the chosen forms of the trained (LoRA) model under ``<run_dir>/export/`` (part 08)."""
    check_full_vocabulary(tokenizer, model_config)
    root = Path(run_dir) / EXPORT_DIR
    folders: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    has_lora = bool(lora_pairs(model))
    params = merge_lora(model, config=config) if has_lora else base_params(model)
    seconds["merge"] = time.perf_counter() - start
    for form in forms:
        start = time.perf_counter()
        if form == HF_DIR:
            folders[form] = save_hf(params, tokenizer, model_config, root / FORM_PATHS[form], dtype=dtype,
                                    model_card=model_card)
        elif form == TUNIX_LORA_DIR:
            if not has_lora:
                continue
            save_tunix_lora(model, root / FORM_PATHS[form], step=step, config=config)
            folders[form] = root / FORM_PATHS[form]
        else:
            raise ValueError(f"unknown export form {form!r}: choose from {HF_DIR}, {TUNIX_LORA_DIR}")
        seconds[form] = time.perf_counter() - start
    return ExportReport(root, folders, seconds)


# ================================================================================================
# Uploads (dry run without credentials)
# ================================================================================================


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


_IGNORED = (".git", ".cache", ".huggingface")


def upload_plan(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """(relative path, bytes) of every file an upload of `folder` sends, in order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: run the export cell first")
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part in _IGNORED or part.startswith(".") for part in rel.parts):
            files.append((rel.as_posix(), path.stat().st_size))
    if not files:
        raise ValueError(f"{folder} is empty: nothing to upload")
    return files


def describe_plan(files: Sequence[tuple[str, int]], destination: str) -> str:
    """The dry-run listing: each file, its size, and where it would go."""
    total = sum(size for _, size in files)
    lines = [f"would upload {len(files)} file(s), {_human(total)} in total, to {destination}:"]
    lines += [f"  {size:>14,} B  {name}" for name, size in files]
    return "\n".join(lines)


@dataclasses.dataclass
class UploadResult:
    """What an upload did (or, in a dry run, would do)."""

    destination: str
    files: list[tuple[str, int]]
    dry_run: bool
    reason: str = ""

    def __str__(self) -> str:
        head = f"DRY RUN ({self.reason})\n" if self.dry_run else "uploaded:\n"
        return head + describe_plan(self.files, self.destination)


def kaggle_handle(model_slug: str, variation: str, framework: str = "transformers", owner: str | None = None) -> str:
    """``owner/model/framework/variation``; `owner` defaults to the KAGGLE_USERNAME secret."""
    if owner is None:
        user = get_secret("KAGGLE_USERNAME")
        owner = user.reveal() if user is not None else "<your-kaggle-username>"
    return f"{owner}/{model_slug}/{framework}/{variation}"


def upload_to_kaggle(folder: str | os.PathLike, handle: str, *, version_notes: str = "",
                     license_name: str = "Gemma", dry_run: bool | None = None) -> UploadResult:
    """Upload `folder` as a new version of the Kaggle Model `handle` (``owner/model/framework/
    variation``) with ``kagglehub.model_upload`` (part 08).

    Credentials: KAGGLE_USERNAME + KAGGLE_KEY, or KAGGLE_API_TOKEN, from the environment or
    Kaggle Secrets. Without them (or with ``dry_run=True``) nothing is sent: the result lists the
    files that would go. Use framework "transformers" for ``export/hf`` and "flax" for the Tunix
    LoRA checkpoint in ``export/tunix``.
    """
    files = upload_plan(folder)
    parts = handle.split("/")
    if len(parts) != 4 or not all(parts) or "<" in handle:
        reason = (f"no Kaggle user name in {handle!r}: set the KAGGLE_USERNAME secret or pass owner= to kaggle_handle"
                  if "<" in handle else f"handle {handle!r} is not owner/model/framework/variation")
        if dry_run is False:
            raise ValueError(reason)
        return UploadResult(f"Kaggle Models {handle}", files, True, reason)
    token, user, key = (get_secret(n) for n in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"))
    has_credentials = token is not None or (user is not None and key is not None)
    if dry_run is None:
        dry_run = not has_credentials
    destination = f"Kaggle Models {handle} (https://www.kaggle.com/models/{'/'.join(parts[:2])})"
    if dry_run:
        reason = "dry_run=True" if has_credentials else "no KAGGLE_USERNAME/KAGGLE_KEY or KAGGLE_API_TOKEN secret"
        return UploadResult(destination, files, True, reason)
    if not has_credentials:
        raise PermissionError("no Kaggle credentials: add KAGGLE_USERNAME and KAGGLE_KEY (kaggle.com → Settings → "
                              "API → Create New Token) as environment variables or Kaggle Secrets")
    import kagglehub

    for name, secret in (("KAGGLE_API_TOKEN", token), ("KAGGLE_USERNAME", user), ("KAGGLE_KEY", key)):
        if secret is not None and not os.environ.get(name):
            os.environ[name] = secret.reveal()  # kagglehub reads them from the environment
    kagglehub.model_upload(handle, str(folder), license_name=license_name, version_notes=version_notes)
    return UploadResult(destination, files, False)


def hf_repo_id(name: str, owner: str | None = None) -> str:
    """``owner/name``; `owner` defaults to the HF_USERNAME secret (a placeholder when unset)."""
    if owner is None:
        user = get_secret("HF_USERNAME")
        owner = user.reveal() if user is not None else "<your-hf-username>"
    return f"{owner}/{name}"


def upload_to_huggingface(folder: str | os.PathLike, repo_id: str, *, private: bool = True,
                          commit_message: str = "Upload Gemma 3 GRPO model (course part 08)",
                          dry_run: bool | None = None) -> UploadResult:
    """Create (if needed) the Hub model repo `repo_id` and upload `folder` into it (part 08).

    The token is the HF_TOKEN secret (a *write* token from huggingface.co/settings/tokens),
    handed to `huggingface_hub` directly — never printed, never stored. Without it (or with
    ``dry_run=True``) nothing is sent and the result lists what would be.
    """
    files = upload_plan(folder)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id={repo_id!r} must look like 'your-username/model-name'")
    if "<" in repo_id:
        reason = f"repo_id {repo_id!r} has no user name: set the HF_USERNAME secret or pass repo_id"
        if dry_run is False:
            raise ValueError(reason)
        return UploadResult(f"Hugging Face Hub model {repo_id}", files, True, reason)
    token = get_secret("HF_TOKEN")
    if dry_run is None:
        dry_run = token is None
    destination = f"Hugging Face Hub model {repo_id} (https://huggingface.co/{repo_id}, {'private' if private else 'public'})"
    if dry_run:
        return UploadResult(destination, files, True, "dry_run=True" if token is not None else "no HF_TOKEN secret")
    if token is None:
        raise PermissionError("no HF_TOKEN: create a write token at https://huggingface.co/settings/tokens and add it "
                              "as an environment variable or a Kaggle Secret named HF_TOKEN")
    from huggingface_hub import HfApi

    api = HfApi(token=token.reveal())
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message)
    return UploadResult(destination, files, False)
