"""The one tokenizer interface every part of megactllm talks to.

Implementations wrap SentencePiece (`sentencepiece.py`) and Hugging Face `tokenizers`
(`huggingface.py`). The contract, which chat templates, datasets and checkpoint export rely on:

- `encode(text)` returns ids for the text alone: no BOS and no EOS are added. Special pieces that
  were registered as user-defined (SentencePiece) or added tokens (HF), e.g. `<|im_start|>`,
  are recognised inside the text and come out as their single id.
- `encode_batch(texts)` equals `[encode(t) for t in texts]`, only faster (native loop, GIL released).
- `decode(ids)` is the inverse for normal text; special/control ids are dropped by SentencePiece.
- `vocab_size` is the tokenizer's own size (before any padding to a multiple for the model).
- `eod_id` is the end-of-document id appended between pretraining documents (always set);
  `bos_id` and `pad_id` are None when the tokenizer has no such token.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence


class Tokenizer(ABC):
    tokenizer_type: str = ""
    # The Jinja chat template that came with the tokenizer (an HF tokenizer_config.json), or None;
    # it names the chat format where a vocabulary carries more than one (chat_formats.py).
    chat_template: str | None = None

    def __init__(self, model_path: str) -> None:
        self.model_path = str(model_path)

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of `text`, with no BOS/EOS added."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text; the same as encode() per text, only faster."""
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (max id + 1)."""

    @abstractmethod
    def token_to_id(self, piece: str) -> int | None:
        """Id of a piece (e.g. '<|im_start|>'), or None when it is not in the vocabulary."""

    @abstractmethod
    def id_to_token(self, token_id: int) -> str:
        """Piece string of an id."""

    @property
    @abstractmethod
    def eod_id(self) -> int:
        """End-of-document id appended after each pretraining document."""

    @property
    @abstractmethod
    def bos_id(self) -> int | None:
        """Beginning-of-sequence id, or None."""

    @property
    @abstractmethod
    def pad_id(self) -> int | None:
        """Padding id, or None (callers then usually pad with eod_id and mask)."""

    def describe(self) -> dict:
        """Metadata to store beside data files and checkpoints, checked on load."""
        return {
            "tokenizer_type": self.tokenizer_type,
            "model_path": self.model_path,
            "vocab_size": self.vocab_size,
            "eod_id": self.eod_id,
            "bos_id": self.bos_id,
            "pad_id": self.pad_id,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_path!r}, vocab_size={self.vocab_size})"


def first_known(tokenizer: Tokenizer, candidates: Sequence[str]) -> int | None:
    """Id of the first of `candidates` present in the vocabulary."""
    for piece in candidates:
        token_id = tokenizer.token_to_id(piece)
        if token_id is not None:
            return token_id
    return None


EOD_CANDIDATES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eod|>", "[SEP]")
BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "[CLS]")
PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]")
