"""Megatron indexed datasets (`{prefix}.bin` + `{prefix}.idx`): writing, reading, merging.

The writer is the C++ builder in `csrc/indexed_builder.cpp`; files are byte-identical to
what megatron-core's `IndexedDatasetBuilder` writes for the same tokens, so
`megatron.core.datasets.indexed_dataset.IndexedDataset` reads them, and `IndexedDatasetReader`
here reads megatron-core's. Beside the two files we keep an optional `{prefix}.json` sidecar
with the tokenizer and counts, so a dataset built with one tokenizer is not silently
trained with another.

    with IndexedDatasetWriter("out/wiki_text_document", vocab_size=64000) as w:
        w.add_document([5, 6, 7, 2])
        w.add_token_lists(tok.encode_batch(texts), eod=tok.eod_id)
    r = IndexedDatasetReader("out/wiki_text_document"); r[0], r.num_documents, r.num_tokens
    merge_datasets(["a_text_document", "b_text_document"], "ab_text_document")
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from megactllm import _indexed_builder
from megactllm.common.atomic import write_json_atomic
from megactllm.errors import UserError

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_BYTES = 9 + 8 + 1 + 8 + 8
# megatron.core.datasets.indexed_dataset.DType codes.
DTYPE_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.uint16): 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
# Tokenizer facts copied into a merged dataset's sidecar.
_TOKENIZER_KEYS = ("tokenizer_type", "model_path", "vocab_size", "eod_id", "bos_id", "pad_id")
# Same boundary as megatron-core's DType.optimal_dtype, so both tools pick the same dtype.
UINT16_VOCAB_LIMIT = 65500
METADATA_VERSION = 1


class DatasetFormatError(UserError, ValueError):
    """A .bin/.idx pair that is missing, truncated or not in Megatron's format."""


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits with margin (vocab < 65,500), int32 otherwise."""
    return np.dtype(np.uint16) if vocab_size < UINT16_VOCAB_LIMIT else np.dtype(np.int32)


def bin_path(prefix: str) -> str:
    return str(prefix) + ".bin"


def idx_path(prefix: str) -> str:
    return str(prefix) + ".idx"


def meta_path(prefix: str) -> str:
    return str(prefix) + ".json"


def read_metadata(prefix: str) -> dict | None:
    """The `{prefix}.json` sidecar (tokenizer, counts), or None for datasets made elsewhere."""
    path = meta_path(prefix)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def dataset_exists(prefix: str) -> bool:
    return os.path.isfile(bin_path(prefix)) and os.path.isfile(idx_path(prefix))


def _as_prefix(path: str) -> str:
    # Accept "x.bin"/"x.idx" where a prefix is meant: a common slip on the command line.
    path = str(path)
    for suffix in (".bin", ".idx"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


@dataclass(frozen=True)
class IndexHeader:
    dtype: np.dtype
    sequence_count: int
    document_count: int  # documents, i.e. the header's document-index count minus one


def read_index_header(path: str) -> IndexHeader:
    """The header of a .idx file, checked."""
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[:9] != INDEX_MAGIC:
        raise DatasetFormatError(f"{path} is not a Megatron .idx file (bad or short header)")
    version, code, sequences, doc_indices = struct.unpack("<QBQQ", head[9:])
    if version != INDEX_VERSION:
        raise DatasetFormatError(f"{path} has .idx version {version}, expected {INDEX_VERSION}")
    if code not in CODE_DTYPES:
        raise DatasetFormatError(f"{path} has unknown dtype code {code}")
    if doc_indices < 1:
        raise DatasetFormatError(f"{path} has no document indices (corrupt)")
    return IndexHeader(CODE_DTYPES[code], sequences, doc_indices - 1)


class IndexedDatasetWriter:
    """Streams documents into a new dataset at `prefix`; nothing is visible there until finalize().

    Give `dtype` or `vocab_size` (which picks the dtype like megatron-core does). Used as a context
    manager it finalizes on success and discards its temporary files on an exception. `sync=False`
    skips the fsync before publishing, for scratch datasets that are merged and deleted anyway.
    """

    def __init__(
        self,
        prefix: str,
        dtype: np.dtype | type | None = None,
        vocab_size: int | None = None,
        metadata: dict | None = None,
        sync: bool = True,
    ) -> None:
        if dtype is None:
            if vocab_size is None:
                raise ValueError("give the dataset's dtype or the tokenizer's vocab_size")
            dtype = dtype_for_vocab(vocab_size)
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPE_CODES or self.dtype.kind not in "iu":
            raise ValueError(f"token dtype must be an integer type Megatron knows, got {self.dtype}")
        if vocab_size is not None and vocab_size - 1 > np.iinfo(self.dtype).max:
            raise ValueError(f"vocabulary of {vocab_size} does not fit {self.dtype}")
        self.prefix = str(prefix)
        self.metadata = dict(metadata or {})
        parent = os.path.dirname(self.prefix)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._builder = _indexed_builder.Builder(self.prefix, DTYPE_CODES[self.dtype], sync)
        self._done = False

    def add_document(self, tokens: Sequence[int] | np.ndarray) -> None:
        """One document of one sequence."""
        self._builder.add_document(np.asarray(tokens) if not isinstance(tokens, np.ndarray) else tokens)

    def add_item(self, tokens: Sequence[int] | np.ndarray) -> None:
        """One sequence of the current document; close the document with end_document()."""
        self._builder.add_item(np.asarray(tokens) if not isinstance(tokens, np.ndarray) else tokens)

    def end_document(self) -> None:
        self._builder.end_document()

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Many documents: `tokens` concatenated, `lengths[i]` tokens in document i."""
        self._builder.add_documents(tokens, np.asarray(lengths, dtype=np.int64))

    def add_token_lists(self, docs: Sequence[Sequence[int]], eod: int | None = None) -> None:
        """Tokenizer output as is (a list of id lists), with `eod` appended to each when given."""
        self._builder.add_token_lists(docs, -1 if eod is None else int(eod))

    def add_dataset(self, prefix: str) -> None:
        """Appends an existing dataset (same dtype), streaming."""
        prefix = _as_prefix(prefix)
        if not dataset_exists(prefix):
            raise DatasetFormatError(f"dataset {prefix} (.bin/.idx) does not exist")
        self._builder.add_index(prefix)

    @property
    def num_documents(self) -> int:
        return self._builder.num_documents

    @property
    def num_sequences(self) -> int:
        return self._builder.num_sequences

    @property
    def num_tokens(self) -> int:
        return self._builder.num_tokens

    def finalize(self) -> None:
        """Writes the .idx and publishes the dataset (.bin renamed first, .idx last)."""
        if self._done:
            return
        # The sidecar goes first: a sidecar without .idx is harmless, the reverse would be unchecked.
        meta = dict(self.metadata)
        meta.update(
            format_version=METADATA_VERSION,
            dtype=self.dtype.name,
            documents=self.num_documents,
            sequences=self.num_sequences,
            tokens=self.num_tokens,
        )
        write_json_atomic(meta_path(self.prefix), meta, indent=1)
        self._builder.finalize()
        self._done = True

    def abort(self) -> None:
        """Removes the temporary files; a previous dataset at the prefix stays as it was."""
        if not self._done:
            self._builder.abort()
            self._done = True

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


class IndexedDatasetReader:
    """Reads a dataset (ours or megatron-core's) by memory map, after checking it is whole."""

    def __init__(self, prefix: str) -> None:
        self.prefix = _as_prefix(prefix)
        ipath, bpath = idx_path(self.prefix), bin_path(self.prefix)
        for path in (ipath, bpath):
            if not os.path.isfile(path):
                raise DatasetFormatError(f"{path} does not exist (dataset prefix {self.prefix})")
        header = read_index_header(ipath)
        self.dtype = header.dtype
        n_seq, n_doc = header.sequence_count, header.document_count
        expected = HEADER_BYTES + n_seq * (4 + 8) + (n_doc + 1) * 8
        actual = os.path.getsize(ipath)
        if actual < expected:
            raise DatasetFormatError(f"{ipath} is truncated: {actual} bytes, the header promises {expected}")
        index = np.memmap(ipath, mode="r", dtype=np.uint8)
        offset = HEADER_BYTES
        self.sequence_lengths = np.frombuffer(index, dtype=np.int32, count=n_seq, offset=offset)
        offset += n_seq * 4
        self.sequence_pointers = np.frombuffer(index, dtype=np.int64, count=n_seq, offset=offset)
        offset += n_seq * 8
        self.document_indices = np.frombuffer(index, dtype=np.int64, count=n_doc + 1, offset=offset)
        if self.document_indices[0] != 0 or self.document_indices[-1] != n_seq:
            raise DatasetFormatError(f"{ipath}: document indices do not run from 0 to the sequence count (corrupt)")
        self.num_tokens = int(self.sequence_lengths.sum(dtype=np.int64))
        bin_bytes = os.path.getsize(bpath)
        described = self.num_tokens * self.dtype.itemsize
        if bin_bytes > described:
            # A cut-short file is never longer than described: these two files were not written together.
            raise DatasetFormatError(
                f"{ipath} and {bpath} do not belong together: the .idx describes {described} bytes of tokens, "
                f"the .bin holds {bin_bytes} (more); the .idx belongs to another .bin (or the .bin to another "
                "dataset); rebuild the dataset or pair each .idx with its own .bin"
            )
        if bin_bytes < described:
            raise DatasetFormatError(
                f"{bpath} holds {bin_bytes} bytes but {ipath} describes {described}: "
                "the .bin is truncated or belongs to another index; rebuild the dataset"
            )
        self._bin = np.memmap(bpath, mode="r", dtype=self.dtype) if bin_bytes else np.zeros(0, self.dtype)
        self.metadata = read_metadata(self.prefix)

    @property
    def num_sequences(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    def __len__(self) -> int:
        return self.num_sequences

    def __getitem__(self, i: int) -> np.ndarray:
        """Tokens of sequence i (for pretraining data: document i)."""
        if not -self.num_sequences <= i < self.num_sequences:
            raise IndexError(f"sequence {i} out of range for {self.prefix} ({self.num_sequences} sequences)")
        i %= self.num_sequences
        start = self.sequence_pointers[i] // self.dtype.itemsize
        return self._bin[start : start + self.sequence_lengths[i]]

    def document(self, d: int) -> np.ndarray:
        """All tokens of document d."""
        first, last = self.document_indices[d], self.document_indices[d + 1]
        if last == first:
            return np.zeros(0, self.dtype)
        start = self.sequence_pointers[first] // self.dtype.itemsize
        return self._bin[start : start + int(self.sequence_lengths[first:last].sum())]

    def document_lengths(self) -> np.ndarray:
        """Tokens per document."""
        per_seq = np.concatenate([[0], np.cumsum(self.sequence_lengths, dtype=np.int64)])
        return per_seq[self.document_indices[1:]] - per_seq[self.document_indices[:-1]]

    def check_tokenizer(self, tokenizer) -> None:
        """Raises when the sidecar says this dataset was made with a different vocabulary."""
        if self.metadata and "vocab_size" in self.metadata and self.metadata["vocab_size"] != tokenizer.vocab_size:
            raise DatasetFormatError(
                f"{self.prefix} was tokenized with a vocabulary of {self.metadata['vocab_size']} "
                f"({self.metadata.get('model_path')}), not {tokenizer.vocab_size} ({tokenizer.model_path})"
            )
        top = int(self._bin.max()) if self.num_tokens else -1
        if top >= tokenizer.vocab_size:
            raise DatasetFormatError(f"{self.prefix} holds id {top}, outside the vocabulary of {tokenizer.model_path}")


def merge_datasets(prefixes: Iterable[str], output_prefix: str) -> IndexedDatasetReader:
    """Concatenates datasets of one dtype into `output_prefix`, streaming (memory independent of size)."""
    prefixes = [_as_prefix(p) for p in prefixes]
    if not prefixes:
        raise ValueError("nothing to merge: no input datasets")
    headers = []
    for p in prefixes:
        if not dataset_exists(p):
            raise DatasetFormatError(f"dataset {p} (.bin/.idx) does not exist")
        headers.append(read_index_header(idx_path(p)))
    dtypes = {h.dtype for h in headers}
    if len(dtypes) > 1:
        listing = ", ".join(f"{p}: {h.dtype}" for p, h in zip(prefixes, headers))
        raise DatasetFormatError(f"cannot merge datasets of different dtypes ({listing})")
    metas = [read_metadata(p) for p in prefixes]
    vocabularies = {m.get("vocab_size") for m in metas if m}
    if len(vocabularies) > 1:
        raise DatasetFormatError(f"cannot merge datasets made with different vocabularies {sorted(vocabularies)}")
    metadata = {k: v for k, v in (metas[0] or {}).items() if k in _TOKENIZER_KEYS} if metas[0] else {}
    metadata["merged_from"] = prefixes
    with IndexedDatasetWriter(output_prefix, dtype=dtypes.pop(), metadata=metadata) as writer:
        for p in prefixes:
            writer.add_dataset(p)
    return IndexedDatasetReader(output_prefix)
