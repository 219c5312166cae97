"""Perplexity and bits per byte of a corpus, scored in sliding windows with a stride.

Every token of every document is scored exactly once (the first from the BOS/EOD token), with up
to the model's window of left context; a stride shorter than the window gives each scored token
more context at more compute. Bits per byte = total negative log-likelihood in bits / UTF-8
bytes of the text, so models with different tokenizers compare.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, TextIO

from megactllm.eval.backends.base import Backend
from megactllm.eval.errors import EvalSetupError
from megactllm.eval.progress import Progress
from megactllm.eval.requests import rolling_requests
from megactllm.common.progress import STDERR


@dataclass
class BitsPerByte:
    bits_per_byte: float
    token_perplexity: float
    nll_nats: float
    tokens: int
    bytes: int
    documents: int
    skipped_records: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def read_corpus(paths: Sequence[str] | str, text_key: str = "text", max_documents: Optional[int] = None):
    """(documents, skipped records) from jsonl/txt/parquet files, globs or directories, through
    the tokenizer's readers; bad records are counted (their first one is named in the warning)."""
    from megactllm.common.corpus import expand_inputs, plan_chunks, read_batches

    documents, skips = [], []
    for chunk in plan_chunks(expand_inputs(paths)):
        for batch in read_batches(chunk, [text_key]):
            documents.extend(t for t in batch.texts[text_key] if t)
            skips.extend(batch.skips)
            if max_documents and len(documents) >= max_documents:
                return documents[:max_documents], skips
    return documents, skips


def bits_per_byte(backend: Backend, documents: Sequence[str], stride: Optional[int] = None,
                  max_length: Optional[int] = None, progress_stream: Optional[TextIO] = STDERR,
                  skipped_records: int = 0) -> BitsPerByte:
    if not documents:
        raise ValueError("bits per byte needs at least one non-empty document")
    window = max_length or backend.max_length
    stride = stride or window
    if not 0 < stride <= window:  # --stride is the user's; rolling_requests would take it for a bug
        raise EvalSetupError(f"stride must be in 1..max_length ({window}), got {stride}")
    requests, owner = [], []
    for d, text in enumerate(documents):
        windows = rolling_requests(backend.encode(text), backend.prefix_token_id, window, stride)
        requests.extend(windows)
        owner.extend([d] * len(windows))
    stream = progress_stream if backend.is_reporting_rank else None
    tokens = sum(len(r.continuation) for r in requests)
    progress = Progress(len(requests), "windows", f"bits per byte, {len(documents)} documents, {tokens} tokens", stream)
    answers = backend.loglikelihood(requests, progress=progress)
    nll = -sum(ll for ll, _ in answers)
    n_bytes = sum(len(t.encode("utf-8")) for t in documents)
    return BitsPerByte(nll / math.log(2) / n_bytes, math.exp(min(nll / tokens, 50.0)), nll, tokens, n_bytes,
                       len(documents), skipped_records)
