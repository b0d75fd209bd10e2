"""Vocabulary trimming for the cpu path: only the embedding rows the course uses (part 04).

With `config.vocab_trim` (cpu, smoke) `load_model` keeps only the ids of
`data/kept_vocabulary.json` (`python -m tools.kept_vocabulary`): the ids of the course's prompts
and targets, ids 0–493 (special, chat, byte tokens) and frequent pieces as margin. A kept id's
logit equals the full model's; LoRA never touches the embedding, so its weights apply unchanged
to the full vocabulary, which export (part 08) loads.
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
    """The committed kept set in `tokenizer`'s ids: Gemma 3's own (each piece checked), or for a
    cut-down Gemma vocabulary (the smoke profile's tiny model) the kept pieces it has."""
    rows, size = read_kept_vocabulary(path), tokenizer.get_piece_size()
    if size == json.loads(Path(path).read_text(encoding="utf-8"))["about"]["vocabulary_size"]:
        wrong = [(i, p) for i, p in rows if i >= size or tokenizer.id_to_piece(i) != p]
        if wrong:
            raise ValueError(
                f"{len(wrong)} kept ids do not match this tokenizer's pieces (e.g. {wrong[0]}): it is not "
                "Gemma 3's tokenizer. Use vocab_trim=False, or regenerate the list for it."
            )
        return [i for i, _ in rows]
    ids = {tokenizer.piece_to_id(p) for _, p in rows} | {i for i in ALWAYS_KEPT if i < size}
    ids.update(i for i in range(size) if tokenizer.IsByte(i) or tokenizer.id_to_piece(i) == "▁")
    return sorted(ids | {tokenizer.unk_id()})


class TrimmedTokenizer:
    """A SentencePiece tokenizer seen through the kept ids: new id = position in `kept` (part 04).

    It encodes with a copy of the full model whose other pieces are unused, which SentencePiece
    splits into kept pieces (a character left over: its byte tokens), so kept pieces encode as in
    the full tokenizer and every text round-trips. Tunix's `TokenizerAdapter` accepts it.
    """

    def __init__(self, full: Any, kept: Sequence[int]) -> None:
        from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2 as pb

        self.full = full
        self.kept = np.asarray(sorted(set(int(i) for i in kept)), dtype=np.int64)
        if len(self.kept) != len(kept) or self.kept[0] < 0 or self.kept[-1] >= full.get_piece_size():
            raise ValueError("kept ids must be distinct ids of the full tokenizer")
        self._new = {int(old): new for new, old in enumerate(self.kept)}
        for name in ("bos_id", "eos_id", "pad_id", "unk_id"):
            if getattr(full, name)() not in self._new:
                raise ValueError(f"the kept ids lack the tokenizer's {name}() {getattr(full, name)()}")
        self._bytes = {int(full.id_to_piece(old)[3:5], 16): new for old, new in self._new.items()
                       if full.IsByte(old)}
        proto = pb.ModelProto.FromString(full.serialized_model_proto())
        for old, piece in enumerate(proto.pieces):
            if piece.type == piece.NORMAL and old not in self._new:
                piece.type = piece.UNUSED
        self._restricted = SentencePieceProcessor(model_proto=proto.SerializeToString())

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        out: list[int] = []
        for old in self._restricted.EncodeAsIds(text, **kwargs):
            if old in self._new:
                out.append(self._new[old])
                continue
            spelled = self.full.id_to_piece(old).replace("▁", " ").encode("utf-8")
            if any(b not in self._bytes for b in spelled):
                raise ValueError(f"cannot spell {spelled!r}: its byte tokens are not kept")
            out.extend(self._bytes[b] for b in spelled)
        return out

    def decode(self, ids: Sequence[int], **kwargs: Any) -> str:
        return self.full.DecodeIds(self.to_full(ids), **kwargs)

    def to_full(self, ids: Sequence[int]) -> list[int]:
        """The full tokenizer's ids of trimmed ids."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.kept)):
            raise ValueError(f"id out of range for the trimmed vocabulary of {len(self.kept)}: "
                             f"{ids.min()}..{ids.max()}")
        return self.kept[ids].tolist()

    def bos_id(self) -> int:
        return self._new[self.full.bos_id()]

    def eos_id(self) -> int:
        return self._new[self.full.eos_id()]

    def pad_id(self) -> int:
        return self._new[self.full.pad_id()]

    def get_piece_size(self) -> int:
        return len(self.kept)

    def id_to_piece(self, new: int) -> str:
        return self.full.id_to_piece(int(self.kept[new]))


def is_trimmed(tokenizer: Any) -> bool:
    """Whether a tokenizer is a `TrimmedTokenizer` (or Tunix's adapter around one)."""
    return isinstance(getattr(tokenizer, "tokenizer", tokenizer), TrimmedTokenizer)


def trim_loaded(loaded: Any, kept: Sequence[int] | None = None) -> Any:
    """A `LoadedModel` whose model (in place), tokenizer and ModelConfig use only the `kept` ids
    (default: the committed list, `kept_ids_for`). The embedding is tied: logit j of the trimmed
    model is the full model's logit `kept[j]`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    kept = list(kept) if kept is not None else kept_ids_for(loaded.tokenizer)
    model, param = loaded.model, loaded.model.embedder.input_embedding
    table = param.get_value()
    rows = jnp.asarray(np.asarray(kept, dtype=np.int32))
    trimmed = jax.device_put(jnp.take(table, rows, axis=0), table.sharding)
    model.embedder.input_embedding = nnx.Param(trimmed, **param.get_metadata())
    if dataclasses.is_dataclass(getattr(model, "config", None)):
        model.config = dataclasses.replace(model.config, num_embed=len(kept))
    return dataclasses.replace(
        loaded, tokenizer=TrimmedTokenizer(loaded.tokenizer, kept),
        model_config=dataclasses.replace(loaded.model_config, num_embed=len(kept)),
        source=f"{loaded.source}; vocabulary trimmed to {len(kept):,} of {loaded.model_config.num_embed:,} ids",
    )
