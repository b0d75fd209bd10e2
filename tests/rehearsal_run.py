"""The `tpu` profile's code path on simulated devices, run by tests/test_rehearsal.py (issue 12).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 COURSE_RUN_DIR=R \
        python tests/rehearsal_run.py train [--kill-after-grpo-checkpoint 2] [--then-check]
    COURSE_RUN_DIR=R python tests/rehearsal_run.py check          # one device, no XLA flag

`train` writes the rehearsal's configuration (the tpu profile with a tiny model that has Gemma 3
1B's head layout: 4 query heads, 1 KV head; lengths and sizes cut) into the run folder and runs
part 06 through `tools.train.main` (part 06's own cells): mesh, weights placed on it,
LoRA, SFT, GRPO, checkpoints. `--kill-after-grpo-checkpoint K` sends this process SIGKILL as
soon as GRPO's checkpoint K is on disk, as when a Kaggle session dies; `train` again resumes.

`--then-check` goes on in the same process (no second JAX start) with `check`: the trained
model loaded as parts 07/08 load it, greedy generation, the logits of the loaded model and the
loss of the first SFT step recomputed; on more than one device also part 07's evaluation, part
08's exports (each loaded back: hf/ in transformers and in Tunix, Tunix LoRA) and a tiny model written
in the layout of Kaggle's Gemma 3 Flax checkpoint loaded through `model.load_checkpoint_dir`
onto the mesh. `check` on its own, in a process with one device, computes the same comparable
figures there. Each writes `R/rehearsal/<devices>.json` (+ `.npz` of logits) for the test.

JAX must see the device count before it starts, so XLA_FLAGS is set by the caller.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's course_utils

from course_utils.config import TrainingConfig  # noqa: E402

GRPO_STEPS = 4


def rehearsal_config() -> TrainingConfig:
    """The tpu profile with what a CPU can run in seconds: the tiny Gemma 3 (4 query heads,
    1 KV head, like the 1B), float32 (so 1- and 8-device runs agree to float tolerance),
    synthetic data, a few steps with a checkpoint after each. Its GRPO recipe (G, β = 0,
    micro batch 1, loss, filtering) is the profile's."""
    tpu = TrainingConfig.for_profile("tpu")
    return TrainingConfig.for_profile(
        "tpu", model="tiny", param_dtype="float32", data_source="synthetic", train_examples=32,
        val_examples=8, eval_examples=4, sft_steps=2, sft_batch_size=4, sft_max_length=192,
        max_steps=GRPO_STEPS, max_prompt_length=160, max_generation_length=12, cache_size=176, top_k=8,
        eval_batch_size=4, eval_samples_k=2, eval_sampled_examples=2, checkpoint_every=1,
        time_budget_minutes=None, global_batch_size=tpu.global_batch_size,
        mini_batch_size=tpu.mini_batch_size, micro_batch_size=tpu.micro_batch_size,
        # the profile filters prompts by pass rate: run that path on a few candidates; a random
        # tiny model solves none, so the lower bound admits p̂ = 0
        filter_candidates=8, filter_samples_k=2, filter_pass_rate_min=0.0,
    )


def _kill_after(step: int) -> None:
    """SIGKILL this process once GRPO's checkpoint `step` is written (a real, unclean kill)."""
    import orbax.checkpoint as ocp

    save = ocp.CheckpointManager.save

    def save_then_die(self, at_step, *args, **kwargs):
        saved = save(self, at_step, *args, **kwargs)
        if saved and int(at_step) == step and "grpo" in str(self.directory):
            self.wait_until_finished()
            print(f"rehearsal: killing myself after GRPO checkpoint {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return saved

    ocp.CheckpointManager.save = save_then_die


def train(run: Path, kill_after: int | None) -> None:
    from tools.train import main

    run.mkdir(parents=True, exist_ok=True)
    if not (run / "config.json").exists():
        rehearsal_config().save(run / "config.json")
    if kill_after:
        _kill_after(kill_after)
    import jax

    from course_utils.model import model_mesh

    print(f"rehearsal: {len(jax.devices())} devices, mesh {tuple(model_mesh(TrainingConfig.load(run / 'config.json')).shape.values())}",
          flush=True)
    main(["--profile", "tpu", "--run-dir", str(run)])


def first_sft_loss(config: TrainingConfig, loaded, mesh) -> float:
    """The loss of SFT's first step recomputed outside the trainer: Tunix's SFT loss on the first
    SFT batch of the model SFT starts from. Fresh LoRA has B = 0, so that model computes
    x·W + x·A·0 — the base model's numbers exactly — and the base model stands in for it."""
    from flax import nnx
    from tunix.sft import peft_trainer

    from course_utils.data import load_splits
    from course_utils.training import sft_batches, sft_model_inputs

    batch = next(sft_batches(load_splits(config)["train"], loaded.tokenizer, config))
    inputs = sft_model_inputs(batch)
    return float(nnx.jit(peft_trainer._default_loss_fn)(loaded.model, **inputs))


def kaggle_flax_layout(loaded, mesh, folder: Path) -> dict:
    """Write `loaded`'s weights as Kaggle's Gemma 3 Flax checkpoint is laid out and load them
    back through the course's loader (`model.load_checkpoint_dir`, which calls Tunix's
    `gemma3.params.create_model_from_checkpoint`) onto `mesh`.

    The layout is the one Tunix's loader reads: test_model's `_upstream_params` builds it, and
    Tunix's own `map_from_upstream_checkpoint` must map it back onto every weight of the model
    unchanged; the names and shapes are those Tunix's docstring lists for the 1B
    (`transformer/layer_0/attn/kv_einsum` w (2, KV heads, width, head width), ...).
    """
    import flax
    from flax import nnx
    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    from tunix.models.gemma3 import params as params_lib

    from course_utils import export as ex
    from course_utils.model import load_checkpoint_dir

    from test_model import _upstream_params  # Kaggle's layout, as the loader tests build it

    def weights(model):  # {(path...): array} of the base weights, layer indices as ints
        state = nnx.to_pure_dict(nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
        return {tuple(int(k) if str(k).isdigit() else k for k in p): v
                for p, v in flax.traverse_util.flatten_dict(state).items()}

    written = {k: np.asarray(v) for k, v in weights(loaded.model).items()}
    tree = _upstream_params(loaded.model)
    back = {tuple(int(k) if str(k).isdigit() else k for k in p): v
            for p, v in flax.traverse_util.flatten_dict(params_lib.map_from_upstream_checkpoint(tree)).items()}
    assert set(back) == set(written), sorted(set(back) ^ set(written))[:5]
    assert all(np.array_equal(back[k], written[k]) for k in written)
    c = loaded.model_config
    shapes = {
        "transformer/embedder": {"input_embedding": (c.num_embed, c.embed_dim)},
        "transformer/final_norm": {"scale": (c.embed_dim,)},
        "transformer/layer_0/attn/_key_norm": {"scale": (c.head_dim,)},
        "transformer/layer_0/attn/_query_norm": {"scale": (c.head_dim,)},
        "transformer/layer_0/attn/attn_vec_einsum": {"w": (c.num_heads, c.head_dim, c.embed_dim)},
        "transformer/layer_0/attn/kv_einsum": {"w": (2, c.num_kv_heads, c.embed_dim, c.head_dim)},
        "transformer/layer_0/attn/q_einsum": {"w": (c.num_heads, c.embed_dim, c.head_dim)},
        "transformer/layer_0/mlp/gating_einsum": {"w": (2, c.hidden_dim, c.embed_dim)},
        "transformer/layer_0/mlp/linear": {"w": (c.hidden_dim, c.embed_dim)},
        "transformer/layer_0/post_attention_norm": {"scale": (c.embed_dim,)},
        "transformer/layer_0/post_ffw_norm": {"scale": (c.embed_dim,)},
        "transformer/layer_0/pre_attention_norm": {"scale": (c.embed_dim,)},
        "transformer/layer_0/pre_ffw_norm": {"scale": (c.embed_dim,)},
    }
    layer0 = {name: {k: v.shape for k, v in group.items()} for name, group in tree.items()
              if not name.startswith("transformer/layer_") or name.startswith("transformer/layer_0/")}
    assert layer0 == shapes, layer0
    assert len(tree) == 2 + c.num_layers * (len(shapes) - 2)

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((folder / "gemma3-1b-it").resolve(), tree)
    checkpointer.wait_until_finished()
    checkpointer.close()
    (folder / "tokenizer.model").write_bytes(ex.sentencepiece_bytes(loaded.tokenizer))
    placed = load_checkpoint_dir(folder, loaded.model_config, mesh=mesh, dtype=loaded.model_config.param_dtype)
    got = weights(placed.model)
    assert set(got) == set(written)
    mismatched = [".".join(map(str, k)) for k in written if not np.array_equal(np.asarray(got[k]), written[k])]
    devices = {len(v.sharding.device_set) for v in got.values()}
    embedding = got[("embedder", "input_embedding")]
    return {"weights": len(written), "mismatched": mismatched, "source": placed.source,
            "embedding_spec": str(embedding.sharding.spec), "device_counts": sorted(devices),
            "mesh_devices": int(np.prod(list(mesh.shape.values()))), "jax_devices": len(jax.devices())}


def check(run: Path) -> dict:
    """What the trained model gives on this process's devices (see the module docstring)."""
    import jax
    import numpy as np

    from course_utils import evaluation as ev, export as ex
    from course_utils.data import build_prompt, load_splits
    from course_utils.generate import forward_logits, generate, sampler_tokens
    from flax import nnx

    from course_utils.model import load_checkpoint_dir, load_model, model_mesh

    config = TrainingConfig.load(run / "config.json")
    mesh = model_mesh(config)
    jax.set_mesh(mesh)
    n = len(jax.devices())
    out: dict = {"devices": n, "mesh": list(mesh.shape.values()), "seconds": {}}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        out["seconds"][name] = round(now - clock[0], 1)
        clock[0] = now

    base = load_model(config, mesh)
    out["sft_first_loss"] = first_sft_loss(config, base, mesh)
    lap("load + first SFT loss")
    found = ev.find_checkpoint(run, "grpo", search_kaggle_inputs=False)
    out["checkpoint"] = str(found)
    trained = ev.load_trained_model(config, found, mesh, base=base)
    examples = load_splits(config)["test"]
    prompts = [build_prompt(e.question) for e in examples]  # evaluation's batch: its sampler compiles once
    replies = generate(trained.model, trained.tokenizer, trained.model_config, prompts, config)
    out["greedy_replies"] = replies
    out["greedy_tokens"] = sampler_tokens(trained.model, trained.tokenizer, trained.model_config, prompts, config,
                                          config.max_generation_length)
    tokens = np.array([[2, *trained.tokenizer.encode(prompts[0])]], dtype=np.int32)
    logits = np.asarray(forward_logits(trained.model, tokens))
    lap("load trained + generate + logits")
    folder = run / "rehearsal"
    folder.mkdir(exist_ok=True)
    arrays = {"tokens": tokens, "logits": logits}
    if n > 1:
        result = ev.evaluate_model(trained, examples=examples, config=config, name="rehearsal",
                                   checkpoint=found, progress=False)
        out["evaluation"] = {"rows": len(result.rows), "metrics": sorted(result.metrics),
                             "greedy_replies": [r["response"] for r in result.rows],
                             "settings": {k: result.settings[k] for k in ("examples", "k", "sampled_examples")}}
        lap("evaluation")
        folders = ex.export_all(trained.model, trained.tokenizer, trained.model_config, config, run,
                                step=found.step, dtype="float32")
        out["exports"] = {name: str(path.relative_to(run)) for name, path in folders.items()}
        lap("exports")
        merged = load_checkpoint_dir(folders[ex.HF_DIR], trained.model_config, mesh,
                                     dtype=trained.model_config.param_dtype)
        arrays["tunix_hf_logits"] = np.asarray(forward_logits(merged.model, tokens))
        arrays["hf_logits"] = ex.transformers_logits(folders[ex.HF_DIR], tokens)
        out["kaggle_flax"] = kaggle_flax_layout(base, mesh, run / "kaggle_flax")
        # The adapter export into the trained model's own LoRA layers, wiped first (no second
        # LoRA wrapping: qwix traces the whole model for it).
        lora = nnx.state(trained.model, nnx.LoRAParam)
        nnx.update(trained.model, jax.tree.map(jax.numpy.zeros_like, lora))
        arrays["wiped_lora_logits"] = np.asarray(forward_logits(trained.model, tokens))
        ex.load_tunix_lora(trained.model, folders[ex.TUNIX_LORA_DIR])
        arrays["tunix_lora_logits"] = np.asarray(forward_logits(trained.model, tokens))
        lap("exports loaded back (hf/ in tunix and transformers, tunix LoRA) + kaggle flax layout")
    np.savez(folder / f"{n}.npz", **arrays)
    (folder / f"{n}.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"rehearsal: check on {n} device(s) written to {folder / f'{n}.json'}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("train", "check"))
    parser.add_argument("--kill-after-grpo-checkpoint", type=int, default=None)
    parser.add_argument("--then-check", action="store_true", help="train, then check in the same process")
    args = parser.parse_args(argv)
    run = Path(os.environ["COURSE_RUN_DIR"]).resolve()
    if args.phase == "train":
        train(run, args.kill_after_grpo_checkpoint)
    if args.phase == "check" or args.then_check:
        check(run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
