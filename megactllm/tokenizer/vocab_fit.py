"""The model's vocabulary against the tokenizer's, and vocabulary extension (the Linly-2 method).

Extension: a tokenizer extended with new pieces (appended after the old ones, as the vocabulary
extension of megactllm.tokenizer does) gets new embedding and output rows, each initialised to
the mean of the old rows of the sub-tokens the *old* tokenizer splits that piece into. The new
rows then start where the model already puts the piece's meaning, instead of at random.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from megactllm.config import ModelConfig
from megactllm.errors import UserError
from megactllm.tokenizer.base import Tokenizer

class VocabMismatchError(UserError, ValueError):
    """The model's vocabulary and the tokenizer disagree."""


_WORD_BOUNDARY = "\u2581"  # SentencePiece's visible space


def _name(tokenizer: Tokenizer) -> str:
    return getattr(tokenizer, "model_path", repr(tokenizer))


def check_vocab_matches(model_config: ModelConfig, tokenizer: Tokenizer, where: str = "the model") -> None:
    """Refuse a tokenizer whose ids do not fit the model's vocabulary, naming both.

    Call before training (and before importing): a tokenizer larger than the embedding would
    index past it; a smaller one is almost always the wrong tokenizer (e.g. the original LLaMA
    tokenizer for a vocabulary-extended model).
    """
    model_vocab, tok_vocab = model_config.vocab_size, tokenizer.vocab_size
    if tok_vocab == model_vocab:
        return
    if tok_vocab > model_vocab:
        hint = (
            "extend the model's embeddings to the new tokenizer with `tools/convert_checkpoint.py import "
            "--tokenizer NEW_TOKENIZER` (vocabulary extension), or use the tokenizer the model was trained with"
        )
    else:
        hint = "use the tokenizer the model was trained with (the checkpoint's tokenizer/ directory holds a copy)"
    raise VocabMismatchError(
        f"tokenizer {_name(tokenizer)} has {tok_vocab} ids but {where} has a vocabulary of {model_vocab}; {hint}"
    )


def check_is_extension(old: Tokenizer, new: Tokenizer) -> None:
    """The new tokenizer must keep every old piece at its old id and only append."""
    if new.vocab_size < old.vocab_size:
        raise VocabMismatchError(
            f"tokenizer {_name(new)} ({new.vocab_size} ids) is smaller than {_name(old)} ({old.vocab_size} ids): "
            "not an extension of it"
        )
    for token_id in range(old.vocab_size):
        if old.id_to_token(token_id) != new.id_to_token(token_id):
            raise VocabMismatchError(
                f"tokenizer {_name(new)} is not an extension of {_name(old)}: id {token_id} is "
                f"{new.id_to_token(token_id)!r} in the first and {old.id_to_token(token_id)!r} in the second; "
                "an extension must keep every old id and only append new pieces"
            )


def _sentencepiece_piece_encoder(old) -> Callable[[str], list[int]]:
    """Old ids of a new SentencePiece piece, split as the piece occurs inside text.

    SentencePiece puts a word boundary (U+2581) before every text. A word-initial piece keeps that
    boundary (encode its text after the boundary, the prefix adds it back); a piece that does not
    start a word (most Chinese pieces) is encoded with the prefix switched off, so no boundary
    leaks into its sub-tokens. Going through the prefix rather than a literal leading space also
    works for models that strip extra whitespace.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(old.sp.serialized_model_proto())
    proto.normalizer_spec.add_dummy_prefix = False
    without_prefix = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())

    def encode(piece: str) -> list[int]:
        if piece.startswith(_WORD_BOUNDARY):
            return old.sp.EncodeAsIds(piece[1:].replace(_WORD_BOUNDARY, " "))
        return without_prefix.EncodeAsIds(piece.replace(_WORD_BOUNDARY, " "))

    return encode


def subtoken_ids(old: Tokenizer, new: Tokenizer) -> list[list[int]]:
    """For each new id (old.vocab_size .. new.vocab_size-1), the old ids its text encodes to."""
    new_ids = range(old.vocab_size, new.vocab_size)
    if hasattr(old, "sp"):  # SentencePiece: pieces spell spaces as U+2581
        encode = _sentencepiece_piece_encoder(old)
        return [encode(new.id_to_token(i)) for i in new_ids]
    # HF tokenizers: byte-level pieces only have a readable text through decode
    return [old.encode(new.decode([i])) for i in new_ids]


@dataclass
class ExtensionReport:
    old_vocab: int
    new_vocab: int
    without_subtokens: int  # new pieces the old tokenizer encodes to nothing: initialised to the mean row


def extend_rows(rows: torch.Tensor, subtokens: list[list[int]]) -> torch.Tensor:
    """[old_vocab, hidden] -> [old_vocab + len(subtokens), hidden]; new row i = mean of rows[subtokens[i]].

    The mean is taken in fp32 and stored in the rows' dtype. A piece with no sub-tokens gets the mean
    of all old rows.
    """
    old_vocab = rows.shape[0]
    fallback = rows.float().mean(dim=0)
    new_rows = torch.empty((len(subtokens), rows.shape[1]), dtype=torch.float32)
    for i, ids in enumerate(subtokens):
        if any(not 0 <= t < old_vocab for t in ids):
            raise VocabMismatchError(f"sub-token ids {ids} of new piece {old_vocab + i} fall outside the old vocabulary")
        new_rows[i] = rows[ids].float().mean(dim=0) if ids else fallback
    return torch.cat([rows, new_rows.to(rows.dtype)], dim=0)


def plan_extension(old: Tokenizer, new: Tokenizer) -> tuple[list[list[int]], ExtensionReport]:
    check_is_extension(old, new)
    subtokens = subtoken_ids(old, new)
    report = ExtensionReport(old.vocab_size, new.vocab_size, sum(1 for ids in subtokens if not ids))
    return subtokens, report
