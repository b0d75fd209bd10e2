"""course_utils.vocab: the trimmed vocabulary is exact on what it keeps (part 04).

The tiny model's tests trim it to a proper subset of its vocabulary (the smoke profile's own
list keeps all 8,192 of its ids), so that pieces outside the kept set exist; the slow tests do
the same checks on the real Gemma 3 270M with the committed list.
"""

import dataclasses
import json
import random

import jax.numpy as jnp
import numpy as np
import pytest

from course_utils import vocab
from course_utils.config import TrainingConfig
from course_utils.data import build_prompt, format_solution, synthetic_problem
from course_utils.generate import compiled_forward, generate
from course_utils.model import load_model
from course_utils.tokenizer import BOS_ID, END_OF_TURN, EOS_TOKENS, check_tokenizer
from tools import kept_vocabulary

# Problems the kept list was not built from (another seed than the generator's splits).
HELD_OUT = [synthetic_problem(random.Random(7_000 + i)) for i in range(4)]
ODD_TEXTS = ["Hello wörld, naïve café — 你好 🙂", "  several   spaces\n\n\ttabs and </div> <b>", "x" * 40 + "½ ≈ 0.5"]


def _logits(model, ids):
    return np.asarray(compiled_forward(model)(jnp.asarray(np.array([[BOS_ID, *ids]], np.int32))))


@pytest.fixture(scope="module")
def tiny_trimmed(tiny_loaded):
    """The smoke model trimmed to the ids of a few course texts, the fixed ids and margin: 2,048."""
    texts = [build_prompt(p.question) + format_solution(p) for p in [synthetic_problem(random.Random(1))]]
    kept = kept_vocabulary.kept_ids(tiny_loaded.tokenizer, texts, size=2048)
    return vocab.trim_loaded(load_model(TrainingConfig.for_profile("smoke"), full_vocabulary=True), kept)


def test_committed_list_is_sorted_and_keeps_the_fixed_ids():
    rows = vocab.read_kept_vocabulary()
    ids = [i for i, _ in rows]
    about = json.loads(vocab.KEPT_VOCABULARY_PATH.read_text())["about"]
    assert ids == sorted(set(ids)) and len(ids) == about["kept"] == vocab.KEPT_SIZE
    assert set(vocab.ALWAYS_KEPT) <= set(ids)
    assert dict(rows)[106] == END_OF_TURN and dict(rows)[2] == "<bos>"


def test_profiles_trim_on_cpu_and_smoke_only():
    assert TrainingConfig.for_profile("cpu").vocab_trim and TrainingConfig.for_profile("smoke").vocab_trim
    assert not TrainingConfig.for_profile("tpu").vocab_trim
    with pytest.raises(ValueError, match="vocab_trim"):
        TrainingConfig.for_profile("cpu", vocab_trim="yes")


def test_kept_ids_are_the_texts_ids_plus_fixed_plus_margin(tiny_loaded):
    tok = tiny_loaded.tokenizer
    text = build_prompt("Mia has 7 shells.")
    kept = kept_vocabulary.kept_ids(tok, [text], size=1000)
    assert len(kept) == 1000 and kept == sorted(kept)
    assert set(tok.encode(text)) <= set(kept) and set(range(494)) <= set(kept)
    with pytest.raises(ValueError, match="raise size"):
        kept_vocabulary.kept_ids(tok, [text], size=10)


def test_trimmed_tokenizer_maps_kept_pieces_exactly_and_round_trips_everything(tiny_loaded, tiny_trimmed):
    full, tok = tiny_loaded.tokenizer, tiny_trimmed.tokenizer
    check_tokenizer(tok)  # BOS/EOS/PAD and the chat tokens keep their ids
    assert [tok.eos_id(), tok.bos_id(), tok.pad_id()] == [1, 2, 0] and tok.encode(END_OF_TURN) == [EOS_TOKENS[1]]
    text = build_prompt(HELD_OUT[0].question)
    full_ids = full.encode(text)
    if set(full_ids) <= set(tok.kept.tolist()):
        assert tok.to_full(tok.encode(text)) == full_ids
    spelled = 0
    for text in ODD_TEXTS + [build_prompt(p.question) + format_solution(p) for p in HELD_OUT]:
        ids = tok.encode(text)
        assert max(ids) < tok.get_piece_size() and tok.decode(ids) == text
        spelled += len(ids) != len(full.encode(text))
    assert spelled > 0  # some pieces were outside the kept set and were spelled with kept ones
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.get_piece_size()])


def test_trimmed_logits_equal_full_logits_on_kept_ids(tiny_loaded, tiny_trimmed):
    assert tiny_trimmed.model.embedder.num_embed == tiny_trimmed.model_config.num_embed == 2048
    kept = tiny_trimmed.tokenizer.kept
    text = build_prompt(HELD_OUT[1].question) + format_solution(HELD_OUT[1])
    ids = tiny_trimmed.tokenizer.encode(text)
    full = _logits(tiny_loaded.model, tiny_trimmed.tokenizer.to_full(ids))
    trimmed = _logits(tiny_trimmed.model, ids)
    assert trimmed.shape[-1] == len(kept)
    np.testing.assert_allclose(trimmed, full[..., kept], rtol=1e-5, atol=1e-5)


def test_greedy_replies_match_where_the_full_model_stays_in_the_kept_set(tiny_loaded):
    config = TrainingConfig.for_profile("smoke")
    trimmed = load_model(config)  # the profile's own list: all of the tiny vocabulary
    prompts = [build_prompt(p.question) for p in HELD_OUT]
    assert isinstance(trimmed.tokenizer, vocab.TrimmedTokenizer)
    assert generate(trimmed.model, trimmed.tokenizer, trimmed.model_config, prompts, config) == \
        generate(tiny_loaded.model, tiny_loaded.tokenizer, tiny_loaded.model_config, prompts, config)


def test_a_list_for_another_tokenizer_is_refused(tiny_loaded, tmp_path):
    path = tmp_path / "kept.json"
    size = tiny_loaded.tokenizer.get_piece_size()
    path.write_text(json.dumps({"about": {"vocabulary_size": size, "kept": 2},
                                "ids_and_pieces": [[0, "<pad>"], [5, "not-this-piece"]]}))
    with pytest.raises(ValueError, match="do not match"):
        vocab.kept_ids_for(tiny_loaded.tokenizer, path)
    with pytest.raises(FileNotFoundError, match="regenerate"):
        vocab.read_kept_vocabulary(tmp_path / "missing.json")


def test_export_refuses_a_trimmed_model(tiny_trimmed, tmp_path):
    from course_utils import export as ex

    config = TrainingConfig.for_profile("smoke")
    with pytest.raises(ValueError, match="full_vocabulary=True"):
        ex.export_all(tiny_trimmed.model, tiny_trimmed.tokenizer, tiny_trimmed.model_config, config, tmp_path)
    assert not (tmp_path / "export").exists()


@pytest.mark.slow
def test_270m_trimmed_logits_and_greedy_replies_equal_the_full_model(cpu_loaded, short_cpu_config):
    trimmed = load_model(short_cpu_config)
    tok = trimmed.tokenizer
    assert tok.get_piece_size() == trimmed.model.embedder.num_embed == vocab.KEPT_SIZE
    problem = HELD_OUT[2]
    text = build_prompt(problem.question) + format_solution(problem) + END_OF_TURN
    ids = tok.encode(text)
    assert tok.to_full(ids) == cpu_loaded.tokenizer.encode(text)  # course text: every piece kept
    np.testing.assert_allclose(_logits(trimmed.model, ids), _logits(cpu_loaded.model, tok.to_full(ids))[..., tok.kept],
                               rtol=1e-4, atol=1e-4)
    config = TrainingConfig.for_profile("cpu", max_prompt_length=160, max_generation_length=24, cache_size=184)
    prompts = [build_prompt(p.question) for p in HELD_OUT]
    assert generate(trimmed.model, tok, trimmed.model_config, prompts, config) == \
        generate(cpu_loaded.model, cpu_loaded.tokenizer, cpu_loaded.model_config, prompts, config)


def test_memory_table_counts_only_the_kept_rows():
    from course_utils.memory import memory_table

    def rows(config):
        return {r["component"]: r["total_gib"] for r in memory_table(config)}

    config = TrainingConfig.for_profile("cpu")
    full, trimmed = rows(dataclasses.replace(config, vocab_trim=False)), rows(config)
    # the update's logits term shrinks by the dropped rows, nothing else in it changes (one device)
    from course_utils.memory import UPDATE_FIT

    sequences = config.micro_batch_size * config.num_generations
    positions = config.max_generation_length + 1  # grpo_completion_head: the completion + 1
    dropped = UPDATE_FIT["logits"] * sequences * positions * (262_144 - vocab.KEPT_SIZE) * 4 / 1024**3
    assert full["update temporaries"] - trimmed["update temporaries"] == pytest.approx(dropped)
    saved = (262_144 - vocab.KEPT_SIZE) * 640 * 4 / 1024**3  # float32 rows of width 640
    assert full["base weights"] - trimmed["base weights"] == pytest.approx(saved)


@pytest.mark.slow
def test_regenerating_the_list_gives_the_committed_one(cpu_loaded):
    from course_utils.data import SourceUnavailable, local_gsm8k_dir

    try:
        local_gsm8k_dir()
    except SourceUnavailable:
        pytest.skip("the committed list includes GSM8K's ids and there is no local GSM8K copy here")
    texts, where = kept_vocabulary.course_texts()
    assert "GSM8K" in where
    assert kept_vocabulary.kept_ids(cpu_loaded.tokenizer, texts) == [i for i, _ in vocab.read_kept_vocabulary()]
