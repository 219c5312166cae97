"""Train a SentencePiece BPE tokenizer with the CT-LLM family's settings.

Byte fallback (no <unk> for rare characters), digits split one per token, no NFKC (it would turn
Chinese full-width punctuation into ASCII), whitespace kept (code), no dummy "▁" prefix, and fixed
special pieces:

    id 0 <unk>   1 <s>   2 </s> (end of document)   3 <pad>   then user-defined pieces
    such as <|im_start|> <|im_end|>, which encode from text as single tokens (chat templates).

    model = train_sentencepiece(TokenizerTrainingSettings(input=["corpus.jsonl"], model_prefix="tok/zh", vocab_size=32000))
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import sentencepiece as spm

from megactllm.common.corpus import expand_inputs, plan_chunks, read_batches
from megactllm.tokenizer.errors import TokenizerFileError

CHAT_PIECES = ("<|im_start|>", "<|im_end|>")


@dataclass
class TokenizerTrainingSettings:
    input: Sequence[str]
    model_prefix: str
    vocab_size: int = 32000
    json_keys: Sequence[str] = ("text",)
    input_format: str | None = None
    eod_piece: str = "</s>"
    bos_piece: str = "<s>"
    pad_piece: str = "<pad>"
    unk_piece: str = "<unk>"
    user_defined: Sequence[str] = field(default_factory=lambda: list(CHAT_PIECES))
    character_coverage: float = 0.9995
    max_sentences: int = 5_000_000  # sampled by SentencePiece when the corpus has more lines
    max_sentence_length: int = 16384  # bytes; longer lines are cut, not dropped
    num_threads: int = max(1, min(os.cpu_count() or 1, 16))
    seed_sentencepiece_size: int = 1_000_000
    hard_vocab_limit: bool = False  # a small corpus yields a smaller vocabulary instead of failing


def iter_training_text(inputs: Sequence[str], keys: Sequence[str], input_format: str | None, max_bytes: int) -> Iterator[str]:
    """Non-empty paragraphs of every document: SentencePiece learns from lines, not whole documents."""
    for chunk in plan_chunks(expand_inputs(inputs), forced_format=input_format):
        for batch in read_batches(chunk, keys):
            for texts in batch.texts.values():
                for text in texts:
                    for para in text.split("\n"):
                        para = para.strip()
                        if para:
                            yield para.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def check_settings(config: TokenizerTrainingSettings) -> None:
    """The settings SentencePiece would refuse with an opaque RuntimeError, named here instead."""
    specials = [config.unk_piece, config.bos_piece, config.eod_piece, config.pad_piece]
    clashes = [p for p in config.user_defined if p in specials]
    if clashes:
        raise TokenizerFileError(f"user-defined pieces {clashes} clash with the unk/bos/eod/pad pieces")
    reserved = len(specials) + len(set(config.user_defined))
    if config.vocab_size <= reserved:
        raise TokenizerFileError(f"vocab_size {config.vocab_size} leaves no room for learned pieces: {reserved} ids go to "
                                 "the unk/bos/eod/pad and user-defined pieces")
    if not 0.98 <= config.character_coverage <= 1.0:  # SentencePiece's own bounds
        raise TokenizerFileError(f"character_coverage {config.character_coverage} must be in 0.98..1.0")
    for name in ("max_sentence_length", "num_threads"):  # max_sentences 0: no sampling
        if getattr(config, name) < 1:
            raise TokenizerFileError(f"{name} must be 1 or more, got {getattr(config, name)}")


def train_sentencepiece(config: TokenizerTrainingSettings) -> str:
    """Trains and returns the path of `{model_prefix}.model` (a `.vocab` is written beside it)."""
    check_settings(config)
    parent = os.path.dirname(config.model_prefix)
    if parent:
        os.makedirs(parent, exist_ok=True)
    sentences = iter_training_text(config.input, config.json_keys, config.input_format, config.max_sentence_length)
    first = next(sentences, None)
    if first is None:
        raise TokenizerFileError(f"no text found in {list(config.input)} under keys {list(config.json_keys)}")

    def all_sentences() -> Iterator[str]:
        yield first
        yield from sentences

    try:
        _train(config, all_sentences())
    except RuntimeError as exc:
        if "required_chars" in str(exc):
            raise TokenizerFileError(
                f"vocab_size {config.vocab_size} cannot hold every character at coverage {config.character_coverage}: "
                f"{exc}. Raise the vocabulary size or lower the character coverage (byte fallback covers the rest)"
            ) from None
        raise
    return config.model_prefix + ".model"


def _train(config: TokenizerTrainingSettings, sentences: Iterator[str]) -> None:
    spm.SentencePieceTrainer.Train(
        sentence_iterator=sentences,
        model_prefix=config.model_prefix,
        model_type="bpe",
        vocab_size=config.vocab_size,
        character_coverage=config.character_coverage,
        byte_fallback=True,
        split_digits=True,
        split_by_unicode_script=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        unk_piece=config.unk_piece,
        bos_piece=config.bos_piece,
        eos_piece=config.eod_piece,
        pad_piece=config.pad_piece,
        user_defined_symbols=list(config.user_defined),
        input_sentence_size=config.max_sentences,
        shuffle_input_sentence=True,
        max_sentence_length=config.max_sentence_length,
        num_threads=config.num_threads,
        seed_sentencepiece_size=config.seed_sentencepiece_size,
        hard_vocab_limit=config.hard_vocab_limit,
        # No invisible "▁" in front of every text: chat templates start with <|im_start|>, not "▁<|im_start|>".
        add_dummy_prefix=False,
        minloglevel=2,
    )
