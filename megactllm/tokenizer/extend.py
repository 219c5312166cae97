"""Vocabulary extension of an existing SentencePiece model (the Linly / Chinese-LLaMA route).

New pieces are appended, so every old id keeps its meaning and old embeddings stay valid; the
model is written beside the old one. Three kinds of piece can be added:

- `pieces`: Chinese characters or words, as NORMAL pieces scored below every existing piece, so
  BPE applies all old merges first. A word BPE cannot reach by merging (no chain of sub-pieces
  in the vocabulary) is stored as USER_DEFINED instead, which SentencePiece always matches
  whole; either way each new piece encodes as exactly one token.
- `user_defined`: special tokens that must encode from text as one token (<|im_start|>, ...).
- `control`: special tokens that never come out of text, only from explicit ids.

    result = extend_sentencepiece("map_neo.model", pieces=["鲲鹏", "大模型"], user_defined=["<|im_start|>"])
    result.output_path, result.added  # [(id, piece), ...]
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from megactllm.common.atomic import write_bytes_atomic
from megactllm.common.optional import require
from megactllm.tokenizer.errors import TokenizerFileError

Piece = model_pb2.ModelProto.SentencePiece


@dataclass
class ExtendResult:
    output_path: str
    old_size: int
    new_size: int
    added: list = field(default_factory=list)  # (id, piece, kind) in id order
    already_present: list = field(default_factory=list)
    made_user_defined: list = field(default_factory=list)  # words BPE could not reach by merges

    def format(self) -> str:
        kinds = Counter(kind for _, _, kind in self.added)
        return (
            f"{self.output_path}: {self.old_size:,} -> {self.new_size:,} pieces "
            f"({', '.join(f'{n} {k}' for k, n in kinds.items()) or 'nothing added'}); "
            f"{len(self.already_present)} already present; "
            f"{len(self.made_user_defined)} words stored as user-defined (no BPE merge path)"
        )


def default_output_path(model_path: str) -> str:
    stem, ext = os.path.splitext(model_path)
    return f"{stem}.extended{ext or '.model'}"


def load_model_proto(model_path: str) -> model_pb2.ModelProto:
    proto = model_pb2.ModelProto()
    with open(model_path, "rb") as f:
        data = f.read()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError
        raise TokenizerFileError(f"{model_path} is not a SentencePiece model: {exc}") from exc
    if not proto.pieces:
        raise TokenizerFileError(f"{model_path} is not a SentencePiece model (no pieces)")
    return proto


def read_pieces(path: str) -> list[str]:
    """One piece per line of a UTF-8 text file, blank lines skipped; other bytes are an error naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise TokenizerFileError(f"pieces file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _clean(pieces: Iterable[str]) -> list[str]:
    seen, out = set(), []
    for piece in pieces:
        piece = piece.strip("\r\n")
        if piece and piece not in seen:
            seen.add(piece)
            out.append(piece)
    return out


def _encodes_alone(proto: model_pb2.ModelProto, pieces: Sequence[str]) -> dict:
    """Ids each piece encodes to inside text (no dummy prefix), with the model as it stands."""
    probe = model_pb2.ModelProto()
    probe.CopyFrom(proto)
    probe.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(probe.SerializeToString())
    return dict(zip(pieces, sp.Encode(list(pieces))))


def extend_sentencepiece(
    model_path: str,
    pieces: Iterable[str] = (),
    user_defined: Iterable[str] = (),
    control: Iterable[str] = (),
    output_path: str | None = None,
) -> ExtendResult:
    """Appends pieces to `model_path` and writes the extended model (default `<stem>.extended.model`)."""
    proto = load_model_proto(model_path)
    if proto.trainer_spec.model_type not in (model_pb2.TrainerSpec.BPE, model_pb2.TrainerSpec.UNIGRAM):
        raise TokenizerFileError(f"{model_path}: only BPE and unigram models can be extended")
    output_path = output_path or default_output_path(model_path)
    if os.path.abspath(output_path) == os.path.abspath(model_path):
        raise TokenizerFileError("the extended model must not overwrite the original (old ids are referenced by checkpoints)")
    existing = {p.piece: i for i, p in enumerate(proto.pieces)}
    result = ExtendResult(output_path, len(proto.pieces), len(proto.pieces))
    min_score = min((p.score for p in proto.pieces if p.type == Piece.NORMAL), default=0.0)

    def append(piece: str, kind: int, score: float, label: str) -> None:
        if piece in existing:
            result.already_present.append(piece)
            return
        entry = proto.pieces.add()
        entry.piece, entry.type, entry.score = piece, kind, score
        existing[piece] = len(proto.pieces) - 1
        result.added.append((existing[piece], piece, label))

    for piece in _clean(control):
        append(piece, Piece.CONTROL, 0.0, "control")
    for piece in _clean(user_defined):
        append(piece, Piece.USER_DEFINED, 0.0, "user_defined")
    words = [p for p in _clean(pieces) if p not in existing]
    result.already_present.extend(p for p in _clean(pieces) if p in existing)
    if any(c.isspace() for w in words for c in w):
        bad = [w for w in words if any(c.isspace() for c in w)][:5]
        raise TokenizerFileError(f"pieces must not contain whitespace (SentencePiece marks spaces with '▁'): {bad}")
    # Ids follow the given order; scores rank shorter words higher, so BPE merges a longer new word
    # through a shorter one added in the same call.
    rank = {w: r for r, w in enumerate(sorted(words, key=len))}
    for word in words:
        append(word, Piece.NORMAL, min_score - 1.0 - rank[word] * 1e-3, "normal")
    if words and proto.trainer_spec.model_type == model_pb2.TrainerSpec.BPE:
        encoded = _encodes_alone(proto, words)
        unreachable = {w for w in words if encoded[w] != [existing[w]]}
        for word in words:
            if word in unreachable:
                proto.pieces[existing[word]].type = Piece.USER_DEFINED
                result.made_user_defined.append(word)
        result.added = [(i, p, "user_defined" if p in unreachable else k) for i, p, k in result.added]
    proto.trainer_spec.vocab_size = len(proto.pieces)
    result.new_size = len(proto.pieces)
    write_bytes_atomic(output_path, proto.SerializeToString())
    return result




def frequent_unsplit_words(texts: Iterable[str], tokenizer, top_k: int = 1000, min_count: int = 5,
                           min_chars: int = 2, max_chars: int = 6) -> list[str]:
    """Chinese words (jieba segmentation) that are not pieces of `tokenizer`, most frequent first:
    the candidates worth adding as single pieces."""
    import logging

    jieba = require("jieba", "mining Chinese words from a corpus")

    jieba.setLogLevel(logging.WARNING)
    counts: Counter = Counter()
    for text in texts:
        for word in jieba.lcut(text):
            if min_chars <= len(word) <= max_chars and all("\u4e00" <= ch <= "\u9fff" for ch in word):
                counts[word] += 1
    out = [w for w, c in counts.most_common() if c >= min_count and tokenizer.token_to_id(w) is None]
    return out[:top_k]
