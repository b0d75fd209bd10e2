"""Build and check the kept vocabulary of the cpu/smoke profiles: data/kept_vocabulary.json
(maintainer tooling; the course reads the file through `course_utils.vocab`).

    python -m tools.kept_vocabulary --regenerate   # rebuild data/kept_vocabulary.json
    python -m tools.kept_vocabulary --report       # probability mass outside the kept set
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from course_utils.config import TrainingConfig
from course_utils.data import (SourceUnavailable, build_prompt, format_solution, load_gsm8k, local_gsm8k_dir,
                               synthetic_problem)
from course_utils.files import atomic_write
from course_utils.generate import compiled_forward
from course_utils.model import load_model
from course_utils.tokenizer import BOS_ID, END_OF_TURN, PAD_ID
from course_utils.vocab import ALWAYS_KEPT, KEPT_SIZE, KEPT_VOCABULARY_PATH, kept_ids_for


def course_texts(include_gsm8k: bool = True) -> tuple[list[str], str]:
    """Every prompt and SFT target the course builds: the offline generator's train and test
    splits, plus GSM8K's when a copy is available (local folder; no download is attempted).
    Returns (texts, where they came from)."""
    examples = [e for split in ("train", "test") for e in load_gsm8k(split, source="synthetic", verbose=False)]
    where = "offline generator train+test"
    if include_gsm8k:
        try:
            local_gsm8k_dir()
            examples += [e for split in ("train", "test") for e in load_gsm8k(split, source="local", verbose=False)]
            where += " and GSM8K train+test"
        except SourceUnavailable:
            print("vocab: no local GSM8K copy; the kept ids come from the offline generator only")
    texts = []
    for example in examples:
        texts.append(build_prompt(example.question))
        texts.append(format_solution(example) + END_OF_TURN)
    return texts, where


def kept_ids(tokenizer: Any, texts: Iterable[str], size: int = KEPT_SIZE) -> list[int]:
    """The sorted ids to keep: those `texts` encode to, `ALWAYS_KEPT`, printable ASCII, then the
    lowest remaining ids (Gemma's most frequent pieces) until `size` ids are kept."""
    vocabulary = tokenizer.get_piece_size()
    kept = set(i for i in ALWAYS_KEPT if i < vocabulary)
    for text in texts:
        kept.update(tokenizer.encode(text))
    for char in map(chr, range(32, 127)):
        kept.update(tokenizer.encode(char))
    if len(kept) > size:
        raise ValueError(f"the course's texts alone use {len(kept)} ids, more than size={size}: raise size")
    candidate = 0
    while len(kept) < size and candidate < vocabulary:
        if not (tokenizer.IsControl(candidate) or tokenizer.IsUnused(candidate)):
            kept.add(candidate)
        candidate += 1
    return sorted(kept)


def write_kept_vocabulary(tokenizer: Any, ids: Sequence[int], path: Path = KEPT_VOCABULARY_PATH,
                          source: str = "") -> Path:
    """Save the kept ids with their pieces (so a mismatching tokenizer is caught on load)."""
    rows = ",\n".join(json.dumps([int(i), tokenizer.id_to_piece(int(i))], ensure_ascii=False) for i in ids)
    header = json.dumps({"vocabulary_size": tokenizer.get_piece_size(), "kept": len(ids), "source": source},
                        ensure_ascii=False)
    return atomic_write(path, f'{{"about": {header},\n"ids_and_pieces": [\n{rows}\n]}}\n'.encode())


def mass_outside(model: Any, tokenizer: Any, kept: Sequence[int], texts: Sequence[str],
                 batch_size: int = 4) -> float:
    """The full model's mean probability mass outside `kept`, over every next-token position of
    `texts` (teacher-forced, BOS + text): what trimming takes away from sampling."""
    outside = np.ones(model.embedder.num_embed, dtype=bool)
    outside[np.asarray(kept)] = False
    outside = jnp.asarray(outside)
    forward = compiled_forward(model)
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        encoded = [[BOS_ID, *tokenizer.encode(t)] for t in texts[start:start + batch_size]]
        length = max(map(len, encoded))
        tokens = np.full((len(encoded), length), PAD_ID, np.int32)
        mask = np.zeros((len(encoded), length), bool)
        for row, ids in enumerate(encoded):
            tokens[row, :len(ids)] = ids
            mask[row, :len(ids) - 1] = True  # positions that predict a real next token
        logits = forward(jnp.asarray(tokens)).astype(jnp.float32)
        probs = jax.nn.softmax(logits, axis=-1)
        per_position = np.asarray(jnp.sum(jnp.where(outside, probs, 0.0), axis=-1))
        total += float(per_position[mask].sum())
        count += int(mask.sum())
    return total / max(count, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regenerate", action="store_true", help="rebuild data/kept_vocabulary.json")
    parser.add_argument("--report", action="store_true", help="the 270M's probability mass outside the kept set")
    parser.add_argument("--texts", type=int, default=64, help="texts (held-out prompts + targets) for --report")
    args = parser.parse_args(argv)
    loaded = load_model(TrainingConfig.for_profile("cpu"), full_vocabulary=True)
    if args.regenerate:
        texts, where = course_texts()
        used = {i for t in texts for i in loaded.tokenizer.encode(t)}
        ids = kept_ids(loaded.tokenizer, texts)
        path = write_kept_vocabulary(loaded.tokenizer, ids, source=(
            f"{len(texts):,} prompts and SFT targets ({where}) using {len(used):,} ids; ids 0-493, ASCII, then the most frequent pieces"))
        print(f"wrote {path}: {len(ids):,} ids of {loaded.tokenizer.get_piece_size():,} "
              f"({len(used):,} used by the course's texts)")
    if args.report:
        rng = random.Random(20261203)  # problems the kept list was not built from
        problems = [synthetic_problem(rng) for _ in range(args.texts)]
        texts = [build_prompt(p.question) + format_solution(p) + END_OF_TURN for p in problems]
        mass = mass_outside(loaded.model, loaded.tokenizer, kept_ids_for(loaded.tokenizer), texts)
        print(f"full Gemma 3 270M: mean probability mass outside the kept ids on {len(texts)} held-out "
              f"prompt+target texts: {100 * mass:.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
