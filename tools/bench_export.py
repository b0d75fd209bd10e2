"""Export figures for the README and part 08: time per form and logit agreement (part 08).

    python -m tools.bench_export [--profile cpu] [--out /tmp/bench_export]

Loads the profile's model, gives its LoRA matrices random values (so the merge matters),
exports every form, then prints: seconds, size per form, and the largest logit difference
between the LoRA model in Tunix and (a) the reloaded Tunix LoRA checkpoint, (b) the merged hf/
folder in Tunix, (c) the same folder run by transformers (float32, CPU; skipped without PyTorch).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from course_utils import export as ex
from course_utils.config import TrainingConfig
from course_utils.data import build_prompt
from course_utils.generate import forward_logits
from course_utils.lora import apply_lora
from course_utils.model import load_model
from tools.proof import hardware_description


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--out", default=None, help="folder for the export (default: a temporary one)")
    args = parser.parse_args(argv)
    config = TrainingConfig.for_profile(args.profile)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_export-"))

    start = time.perf_counter()
    loaded = load_model(config, full_vocabulary=True)  # what part 08 exports
    lora_model = apply_lora(loaded.model, config)
    leaves, treedef = jax.tree.flatten(nnx.state(lora_model, nnx.LoRAParam))
    key = jax.random.PRNGKey(0)
    nnx.update(lora_model, jax.tree.unflatten(treedef, [0.02 * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
                                                        for i, x in enumerate(leaves)]))
    print(f"model: {loaded.source} ({time.perf_counter() - start:.1f} s)\nhardware: {hardware_description()}")
    prompt = build_prompt("Tom has 3 boxes with 12 eggs in each box. He breaks 5 eggs. How many eggs are left?")
    tokens = np.array([[2, *loaded.tokenizer.encode(prompt)]], dtype=np.int32)
    reference = np.asarray(forward_logits(lora_model, tokens))

    start = time.perf_counter()
    folders = ex.export_all(lora_model, loaded.tokenizer, loaded.model_config, config, out, step=1)
    print(f"export_all: {time.perf_counter() - start:.1f} s in total, into {out / ex.EXPORT_DIR}")
    for name, folder in folders.items():
        print(f"{name:<13} {sum(p.stat().st_size for p in folder.rglob('*') if p.is_file()):>15,} B  {folder}")

    def worst(logits: np.ndarray) -> str:
        return f"{np.abs(logits - reference).max():.2e} (logits up to {np.abs(reference).max():.1f})"

    fresh = apply_lora(loaded.model, config, seed=config.seed + 1)
    ex.load_tunix_lora(fresh, folders["tunix_lora"])
    print("max |Δ logits| reloaded Tunix LoRA checkpoint: ", worst(np.asarray(forward_logits(fresh, tokens))))
    from course_utils.model import load_checkpoint_dir

    reloaded = load_checkpoint_dir(folders["hf"], loaded.model_config, dtype=loaded.model_config.param_dtype).model
    print("max |Δ logits| hf/ folder reloaded in Tunix:   ", worst(np.asarray(forward_logits(reloaded, tokens))))
    try:
        start = time.perf_counter()
        hf = ex.transformers_logits(folders["hf"], tokens)
        print("max |Δ logits| transformers (float32, CPU):    ", worst(hf),
              f"argmax agreement {np.mean(hf.argmax(-1) == reference.argmax(-1)):.0%} ({time.perf_counter() - start:.1f} s)")
    except ImportError as err:
        print(err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
