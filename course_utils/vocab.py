"""Vocabulary trimming for the cpu path: only the embedding rows the course uses (part 04).

Gemma 3's tied embedding has 262,144 rows; on the 270M model it holds most of the weights, and
the output layer (the same matrix) costs more multiply-adds per token than all 18 layers
together. Grade-school arithmetic in English needs a few thousand of those rows. With
`config.vocab_trim` (cpu and smoke profiles; tpu keeps the full vocabulary) `load_model` keeps
only the rows of `data/kept_vocabulary.json`:

* every id the course's data produces: prompts (system prompt + question), SFT targets
  (`format_solution` + `<end_of_turn>`) of the offline generator's train and test splits, and of
  GSM8K's when a copy was available when the list was made;
* the special, chat and byte-fallback tokens (ids 0–493 in Gemma 3, so `<bos>`, `<eos>`,
  `<end_of_turn>` keep their ids), the printable ASCII characters;
* as a margin, the most frequent remaining pieces (Gemma's lower ids are its earlier, more
  frequent merges) up to `KEPT_SIZE` rows.

What it keeps is exact: a kept id's logit in the trimmed model equals the full model's (same
row, same hidden state), and `TrimmedTokenizer` encodes text into exactly the full tokenizer's
pieces whenever those are kept. A piece outside the set (rare: an unusual word or script) is
spelled with kept pieces instead, so any text still encodes and decodes losslessly. Sampling
renormalises over the kept ids: the full model's probability mass outside them is what that
changes (printed by `python -m tools.kept_vocabulary --report`).

LoRA never touches the embedding, so the LoRA weights trained on the trimmed model apply
unchanged to the full-vocabulary Gemma: export (part 08) loads the full vocabulary.

    python -m tools.kept_vocabulary --regenerate   # rebuild data/kept_vocabulary.json
    python -m tools.kept_vocabulary --report       # mass outside the kept set, on course texts
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np


KEPT_VOCABULARY_PATH = Path(__file__).resolve().parent.parent / "data" / "kept_vocabulary.json"
KEPT_SIZE = 32_768  # rows kept in all (data ids + fixed ids + frequent pieces as margin)
ALWAYS_KEPT = range(0, 494)  # Gemma 3: control, chat, HTML/whitespace user pieces, 256 byte tokens


def read_kept_vocabulary(path: Path = KEPT_VOCABULARY_PATH) -> list[tuple[int, str]]:
    """The committed (id, piece) list of `data/kept_vocabulary.json`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: it is part of the repository (restore it with git), or rebuild it with "
            "`python -m tools.kept_vocabulary --regenerate`, or set vocab_trim=False in the config."
        ) from None
    return [(int(i), str(p)) for i, p in data["ids_and_pieces"]]


def kept_ids_for(tokenizer: Any, path: Path = KEPT_VOCABULARY_PATH) -> list[int]:
    """The committed kept set in `tokenizer`'s own ids.

    For Gemma 3's full tokenizer these are the committed ids (each piece is checked); for a
    cut-down Gemma vocabulary (the smoke profile's tiny model) the kept pieces it has.
    """
    rows = read_kept_vocabulary(path)
    size = tokenizer.get_piece_size()
    if size == json.loads(Path(path).read_text(encoding="utf-8"))["about"]["vocabulary_size"]:
        wrong = [(i, p) for i, p in rows if i >= size or tokenizer.id_to_piece(i) != p]
        if wrong:
            raise ValueError(
                f"{len(wrong)} kept ids do not match this tokenizer's pieces (e.g. {wrong[0]}): it is not "
                "Gemma 3's tokenizer. Use vocab_trim=False, or regenerate the list for it."
            )
        return [i for i, _ in rows]
    unknown = tokenizer.unk_id()
    ids = {tokenizer.piece_to_id(p) for _, p in rows} - {unknown}
    ids.update(i for i in ALWAYS_KEPT if i < size)
    ids.update(i for i in range(size) if tokenizer.IsByte(i) or tokenizer.id_to_piece(i) == "▁")
    ids.add(unknown)
    return sorted(ids)


# --- the tokenizer adapter ----------------------------------------------------------------------
class TrimmedTokenizer:
    """A SentencePiece tokenizer seen through the kept ids: new id = position in `kept`.

    `encode` maps the full tokenizer's ids; a piece that was not kept is spelled with kept
    pieces (longest match first, then UTF-8 byte tokens), so every text round-trips. Tunix's
    `TokenizerAdapter` accepts it (it has encode/decode/bos_id/eos_id/pad_id). Introduced in
    part 04.
    """

    def __init__(self, full: Any, kept: Sequence[int]) -> None:
        self.full = full
        self.kept = np.asarray(sorted(set(int(i) for i in kept)), dtype=np.int64)
        if len(self.kept) != len(kept) or self.kept[0] < 0 or self.kept[-1] >= full.get_piece_size():
            raise ValueError("kept ids must be distinct ids of the full tokenizer")
        self._new = {int(old): new for new, old in enumerate(self.kept)}
        self._pieces = {full.id_to_piece(int(old)): new for new, old in enumerate(self.kept)
                        if not (full.IsControl(int(old)) or full.IsByte(int(old)) or full.IsUnknown(int(old)))}
        self._longest = max(map(len, self._pieces))
        self._bytes = {int(full.id_to_piece(int(old))[3:5], 16): new for new, old in enumerate(self.kept)
                       if full.IsByte(int(old))}
        self._spelled: dict[int, list[int]] = {}
        for name in ("bos_id", "eos_id", "pad_id", "unk_id"):
            if getattr(full, name)() not in self._new:
                raise ValueError(f"the kept ids lack the tokenizer's {name}() {getattr(full, name)()}")

    # the SentencePiece methods the course and Tunix call
    def encode(self, text: str, **kwargs: Any) -> list[int]:
        out: list[int] = []
        for old in self.full.EncodeAsIds(text, **kwargs):
            new = self._new.get(old)
            out.extend([new] if new is not None else self._spell(old))
        return out

    EncodeAsIds = encode

    def decode(self, ids: Sequence[int], **kwargs: Any) -> str:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.kept)):
            raise ValueError(f"id out of range for the trimmed vocabulary of {len(self.kept)}: {ids.min()}..{ids.max()}")
        return self.full.DecodeIds([int(i) for i in self.kept[ids]], **kwargs)

    DecodeIds = decode

    def _spell(self, old: int) -> list[int]:
        if old not in self._spelled:
            piece = self.full.id_to_piece(old)
            out, start = [], 0
            while start < len(piece):
                for end in range(min(len(piece), start + self._longest), start, -1):
                    new = self._pieces.get(piece[start:end])
                    if new is not None:
                        out.append(new)
                        start = end
                        break
                else:
                    char = piece[start].replace("▁", " ")
                    missing = [b for b in char.encode("utf-8") if b not in self._bytes]
                    if missing:
                        raise ValueError(f"cannot spell piece {piece!r}: byte tokens {missing} are not kept")
                    out.extend(self._bytes[b] for b in char.encode("utf-8"))
                    start += 1
            self._spelled[old] = out
        return self._spelled[old]

    def to_full(self, ids: Sequence[int]) -> list[int]:
        """The full tokenizer's ids of trimmed ids."""
        return [int(i) for i in self.kept[np.asarray(ids, dtype=np.int64)]]

    def bos_id(self) -> int:
        return self._new[self.full.bos_id()]

    def eos_id(self) -> int:
        return self._new[self.full.eos_id()]

    def pad_id(self) -> int:
        return self._new[self.full.pad_id()]

    def unk_id(self) -> int:
        return self._new[self.full.unk_id()]

    def get_piece_size(self) -> int:
        return len(self.kept)

    def id_to_piece(self, new: int) -> str:
        return self.full.id_to_piece(int(self.kept[new]))

    def piece_to_id(self, piece: str) -> int:
        return self._new.get(self.full.piece_to_id(piece), self.unk_id())

    def IsControl(self, new: int) -> bool:  # noqa: N802 (SentencePiece's name)
        return self.full.IsControl(int(self.kept[new]))

    def IsByte(self, new: int) -> bool:  # noqa: N802
        return self.full.IsByte(int(self.kept[new]))

    def IsUnused(self, new: int) -> bool:  # noqa: N802
        return self.full.IsUnused(int(self.kept[new]))

    def IsUnknown(self, new: int) -> bool:  # noqa: N802
        return self.full.IsUnknown(int(self.kept[new]))

    def serialized_model_proto(self) -> bytes:
        raise TypeError(
            "a trimmed tokenizer has no SentencePiece model of its own: export the full-vocabulary "
            "model (load_model(config, full_vocabulary=True)); see course_utils.vocab."
        )


# --- the model ----------------------------------------------------------------------------------
def trim_model(model: Any, kept: Sequence[int]) -> Any:
    """Keep only the embedding rows `kept` of a Tunix Gemma 3 (in place; returns the model).

    The embedding is tied, so the output layer shrinks with it: logit j of the trimmed model is
    the full model's logit `kept[j]`.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    param = model.embedder.input_embedding
    table = param.get_value()
    rows = jnp.asarray(np.asarray(kept, dtype=np.int32))
    trimmed = jax.device_put(jnp.take(table, rows, axis=0), table.sharding)
    model.embedder.input_embedding = nnx.Param(trimmed, **param.get_metadata())
    if dataclasses.is_dataclass(getattr(model, "config", None)):
        model.config = dataclasses.replace(model.config, num_embed=len(kept))
    return model


def is_trimmed(tokenizer: Any) -> bool:
    """Whether a tokenizer is a `TrimmedTokenizer` (or Tunix's adapter around one)."""
    return isinstance(getattr(tokenizer, "tokenizer", tokenizer), TrimmedTokenizer) or isinstance(tokenizer, TrimmedTokenizer)


def trim_loaded(loaded: Any, kept: Sequence[int] | None = None) -> Any:
    """A `LoadedModel` whose model, tokenizer and ModelConfig use only the kept vocabulary.

    `kept` defaults to the committed list in the tokenizer's ids (`kept_ids_for`).
    """
    kept = list(kept) if kept is not None else kept_ids_for(loaded.tokenizer)
    full_size = loaded.model_config.num_embed
    trim_model(loaded.model, kept)
    return dataclasses.replace(
        loaded, tokenizer=TrimmedTokenizer(loaded.tokenizer, kept),
        model_config=dataclasses.replace(loaded.model_config, num_embed=len(kept)),
        source=f"{loaded.source}; vocabulary trimmed to {len(kept):,} of {full_size:,} ids (course_utils.vocab)",
    )
