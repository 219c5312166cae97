"""Chat samples in Megatron indexed datasets, loss masks included.

One sample is one *document* of the indexed dataset made of several *sequences* of equal length
(Megatron's document/sequence split, so the files stay readable by megatron-core's IndexedDataset):

    SFT: [tokens, loss_mask]
    DPO: [chosen_tokens, chosen_mask, rejected_tokens, rejected_mask]

Masks are stored as 0/1 in the token dtype: storage doubles, but a mask can never drift out of
alignment with its tokens and the reader needs no second file. The `{prefix}.json` sidecar records
the kind, the fields, the chat template, the tokenizer and the preprocessing counts.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megactllm.data.pretrain.indexed import (
    DatasetFormatError,
    IndexedDatasetReader,
    IndexedDatasetWriter,
)

SFT_FIELDS = ("tokens", "loss_mask")
DPO_FIELDS = ("chosen_tokens", "chosen_mask", "rejected_tokens", "rejected_mask")
FIELDS = {"sft": SFT_FIELDS, "dpo": DPO_FIELDS}


class ChatSampleWriter:
    """Writes samples of one kind ("sft" or "dpo") to `prefix`; use as a context manager."""

    def __init__(self, prefix: str, kind: str, vocab_size: int, metadata: dict | None = None) -> None:
        if kind not in FIELDS:
            raise ValueError(f"kind must be one of {sorted(FIELDS)}, got {kind!r}")
        self.kind, self.fields = kind, FIELDS[kind]
        meta = dict(metadata or {})
        meta.update(kind=kind, fields=list(self.fields))
        self._writer = IndexedDatasetWriter(prefix, vocab_size=vocab_size, metadata=meta)
        self.num_samples = 0

    @property
    def metadata(self) -> dict:
        return self._writer.metadata

    def add(self, *arrays: Sequence[int]) -> None:
        """One sample: its arrays in the order of `fields`, token/mask pairs of equal length."""
        if len(arrays) != len(self.fields):
            raise ValueError(f"{self.kind} sample needs {len(self.fields)} arrays ({self.fields}), got {len(arrays)}")
        for tokens, mask in zip(arrays[::2], arrays[1::2]):
            if len(tokens) != len(mask):
                raise ValueError(f"tokens ({len(tokens)}) and mask ({len(mask)}) differ in length")
        for a in arrays:
            self._writer.add_item(np.asarray(a))
        self._writer.end_document()
        self.num_samples += 1

    def __enter__(self) -> ChatSampleWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer.__exit__(exc_type, exc, tb)


class ChatSampleReader:
    """Random access to the samples written by ChatSampleWriter."""

    def __init__(self, prefix: str, kind: str) -> None:
        self.reader = IndexedDatasetReader(prefix)
        self.prefix = self.reader.prefix
        self.metadata = self.reader.metadata or {}
        self.fields = FIELDS[kind]
        found = self.metadata.get("kind")
        if found != kind:
            what = f"a {found!r} dataset" if found else "not a chat dataset (no kind in its .json sidecar)"
            raise DatasetFormatError(
                f"{self.prefix} is {what}; expected {kind!r}: write it with tools/preprocess_{kind}.py"
            )
        n = len(self.fields)
        docs = self.reader.document_indices
        if np.any(np.diff(docs) != n):
            raise DatasetFormatError(f"{self.prefix}: every {kind} sample must hold {n} sequences ({self.fields})")
        self._lengths = self.reader.sequence_lengths.reshape(-1, n)

    def __len__(self) -> int:
        return self.reader.num_documents

    def sample(self, i: int) -> dict[str, np.ndarray]:
        first = int(self.reader.document_indices[i])
        return {name: np.asarray(self.reader[first + k]) for k, name in enumerate(self.fields)}

    def lengths(self, field: int = 0) -> np.ndarray:
        """Token count of sequence `field` of each sample, without reading the tokens."""
        return self._lengths[:, field]

    def check_tokenizer(self, tokenizer) -> None:
        self.reader.check_tokenizer(tokenizer)
