"""The model's vocabulary against the tokenizer's, and vocabulary extension (the Linly-2 method).

Extension: a tokenizer extended with new pieces (appended after the old ones, as the vocabulary
extension of megactllm.tokenizer does) gets new embedding and output rows, each initialised to
the mean of the old rows of the sub-tokens the *old* tokenizer splits that piece into. The new
rows then start where the model already puts the piece's meaning, instead of at random.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from megactllm.config import ModelConfig
from megactllm.errors import UserError
from megactllm.tokenizer.base import Tokenizer

class VocabMismatchError(UserError, ValueError):
    """The model's vocabulary and the tokenizer disagree."""


_WORD_BOUNDARY = "\u2581"  # SentencePiece's visible space


def _name(tokenizer: Tokenizer) -> str:
    return getattr(tokenizer, "model_path", repr(tokenizer))


def check_tokenizer_fits(
    model_config: ModelConfig, tokenizer: Tokenizer, where: str = "the model", reference: Optional[Tokenizer] = None
) -> None:
    """Refuse a tokenizer that does not fit the model's vocabulary, naming both.

    The rule: a tokenizer fits when every id it produces is below the embedding's rows; rows beyond
    its ids are padding (Megatron's make-vocab-size-divisible-by, Qwen2.5's 151,936 rows for 151,665
    ids). A wrong tokenizer is refused by what it is: more ids than rows, or, given the model's own
    tokenizer (`reference`: the checkpoint's copy in tokenizer/, an HF directory's tokenizer), fewer
    ids than it or pieces that differ from it. An extension of the reference (same pieces, more
    appended) fits while it stays within the rows.
    """
    rows, ids = model_config.vocab_size, tokenizer.vocab_size
    if ids > rows:
        raise VocabMismatchError(
            f"tokenizer {_name(tokenizer)} has {ids} ids but {where} has a vocabulary of {rows}; extend the model's "
            "embeddings to the new tokenizer with `tools/convert_checkpoint.py import --tokenizer NEW_TOKENIZER` "
            "(vocabulary extension), or use the tokenizer the model was trained with"
        )
    if reference is None:
        return
    if ids < reference.vocab_size:
        raise VocabMismatchError(
            f"tokenizer {_name(tokenizer)} has {ids} ids but {where} has a vocabulary of {reference.vocab_size} "
            f"(its own tokenizer {_name(reference)}; {rows} rows); use the tokenizer the model was trained with "
            "(the checkpoint's tokenizer/ directory holds a copy)"
        )
    check_is_extension(reference, tokenizer)


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


def fit_model_to_tokenizer(cfg, tokenizer: Tokenizer) -> None:
    """Set a run's rows from its tokenizer when model.make_vocab_size_divisible_by asks, then check the fit.

    The recipe's model.vocab_size stands unless the option is set; set, it gives the tokenizer's ids
    rounded up to the multiple, and a model.vocab_size the user also set that differs is refused.
    """
    from megactllm.config import ConfigError

    m, path = cfg.model, getattr(tokenizer, "model_path", None) or cfg.data.tokenizer_model
    multiple = m.make_vocab_size_divisible_by
    if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1):
        raise ConfigError(f"model.make_vocab_size_divisible_by must be a positive integer (or null), not {multiple!r}")
    rows = m.rows_for_tokenizer(tokenizer.vocab_size)
    if rows != m.vocab_size:
        origin = cfg.origin("model", "vocab_size") or ""
        if origin.startswith(("the recipe", "an override")):
            raise ConfigError(
                f"model.vocab_size={m.vocab_size} (set by {origin}) but model.make_vocab_size_divisible_by={multiple} "
                f"makes the rows {rows} for the {tokenizer.vocab_size} ids of tokenizer {path}: drop one of the two"
            )
        m.vocab_size = rows
    if tokenizer.vocab_size > m.vocab_size:
        raise VocabMismatchError(
            f"tokenizer {path} has {tokenizer.vocab_size} pieces but model.vocab_size is {m.vocab_size}: "
            f"set model.vocab_size={tokenizer.vocab_size} (or more: rows past the tokenizer's ids are padding)"
        )
