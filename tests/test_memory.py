"""course_utils.memory: the memory table is computed from the config and the real shapes (part 04)."""

import pytest

from course_utils.config import TrainingConfig
from course_utils.memory import GIB, TARGETS, format_memory_table, memory_table, target_tables, weight_counts
from course_utils.model import count_parameters, tiny_model_config


def _row(table, name):
    return next(r for r in table if r["component"] == name)


def test_weight_count_from_shapes_equals_the_loaded_models(cpu_loaded, tiny_loaded):
    assert weight_counts(cpu_loaded.model_config)[0] == count_parameters(cpu_loaded.model)
    assert weight_counts(tiny_loaded.model_config)[0] == count_parameters(tiny_loaded.model)


def test_sharding_on_eight_devices_divides_the_big_matrices():
    total, per_device = weight_counts(_one_b(), (2, 4))
    assert 0.99e9 < total < 1.01e9  # Gemma 3 1B
    # the embedding and all projections are split over 'tp'; norms and the single K/V head are not
    assert total / 8 < per_device < total / 8 * 1.25


def _one_b():
    from course_utils.model import tunix_model_config

    return tunix_model_config(TrainingConfig.for_profile("tpu"))


def test_table_follows_the_config():
    config = TrainingConfig.for_profile("cpu")
    table = memory_table(config)
    names = [r["component"] for r in table]
    for needed in ("base weights", "LoRA weights", "optimiser state (AdamW)", "KV cache for the rollouts",
                   "reference model", "update temporaries", "total"):
        assert needed in names
    kv = config.global_batch_size * config.num_generations * config.cache_size * 18 * 2 * 1 * 256 * 4
    assert _row(table, "KV cache for the rollouts")["total_gib"] == pytest.approx(kv / GIB)
    assert config.beta > 0  # a second copy of the base weights (Tunix does not share the actor's)
    assert _row(table, "reference model")["total_gib"] == _row(table, "base weights")["total_gib"]
    assert _row(memory_table(TrainingConfig.for_profile("cpu", beta=0.0)), "reference model")["total_gib"] == 0
    lora = _row(table, "LoRA weights")["total_gib"]
    assert _row(table, "optimiser state (AdamW)")["total_gib"] == pytest.approx(3 * lora)  # + the accumulator
    assert _row(table, "total")["total_gib"] == pytest.approx(sum(r["total_gib"] for r in table[:-1]))
    doubled = memory_table(TrainingConfig.for_profile("cpu", num_generations=2 * config.num_generations))
    assert _row(doubled, "KV cache for the rollouts")["total_gib"] == pytest.approx(2 * kv / GIB)
    bigger = memory_table(TrainingConfig.for_profile("cpu", lora_rank=2 * config.lora_rank))
    assert _row(bigger, "LoRA weights")["total_gib"] == pytest.approx(2 * lora)
    update = _row(table, "update temporaries")["per_device_gib"]
    assert config.micro_batch_size == 1
    doubled = memory_table(TrainingConfig.for_profile("cpu", micro_batch_size=2))
    assert _row(doubled, "update temporaries")["per_device_gib"] == pytest.approx(2 * update)


def test_update_estimate_matches_xlas_compiled_analysis_of_the_real_update():
    """The table's update temporaries against XLA's compiled memory analysis of the same update:
    Tunix's train step (tools.rehearse) on the tiny model with the tpu profile's loss,
    LoRA and optimiser, at a shape the fit never saw. The old table (logits only) was 3-5× low."""
    from tools import rehearse
    from course_utils.model import model_mesh, tunix_model_config

    config = TrainingConfig.for_profile("tpu", model="tiny", micro_batch_size=2, max_prompt_length=96,
                                        max_generation_length=160, cache_size=256)
    measured = rehearse.measure_update(rehearse.full_shapes(config)[1], config, model_mesh(config, (1, 1)))
    table = memory_table(config, (1, 1))
    estimate = _row(table, "update temporaries")["per_device_gib"] * GIB
    assert 0.75 < estimate / measured["temp"] < 1.33, (estimate / GIB, measured["temp"] / GIB)
    # what the table used to count: one float32 copy of the logits of the micro batch
    sequences, tokens = 2 * config.num_generations, 96 + 160
    old = sequences * tokens * tunix_model_config(config).num_embed * 4
    assert measured["temp"] > 3 * old  # the underestimate this test exists to catch
    # the whole update: weights, LoRA, optimiser and temporaries against XLA's peak
    persistent = sum(_row(table, name)["per_device_gib"] for name in
                     ("base weights", "LoRA weights", "LoRA gradients", "optimiser state (AdamW)", "update temporaries"))
    assert 0.75 < persistent * GIB / measured["peak"] < 1.33


def test_targets_cover_the_tpu_and_the_cpu_and_1b_fits_a_tpu():
    tables = target_tables()
    assert [t["name"] for t, _ in tables] == [t["name"] for t in TARGETS]
    names = " / ".join(t["name"] for t in TARGETS)
    assert "1B-it on TPU v5e-8" in names and "270M on CPU" in names and "v3-8" not in names
    for target, table in tables:
        text = format_memory_table(table, target["name"], target["device_gib"])
        assert target["name"] in text
        if target["device_gib"]:
            assert "fits" in text and "NOT" not in text
            assert _row(table, "base weights")["per_device_gib"] < _row(table, "base weights")["total_gib"] / 4
    bf16 = _row(tables[0][1], "base weights")["total_gib"]
    assert bf16 == pytest.approx(weight_counts(_one_b())[0] * 2 / GIB)


def test_a_model_too_big_for_the_device_is_flagged():
    table = memory_table(TrainingConfig.for_profile("tpu", num_generations=64, cache_size=4096,
                                                    max_generation_length=2048))
    assert "does NOT fit" in format_memory_table(table, device_gib=16.0)


def test_tiny_config_has_the_documented_size():
    c = tiny_model_config()
    assert (c.num_layers, c.embed_dim, c.hidden_dim, c.num_heads, c.head_dim, c.num_kv_heads) == (2, 64, 128, 4, 16, 1)
