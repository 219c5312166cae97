"""Asynchronous checkpoint writes on megatron-core's AsyncCallsQueue, safe with several parts.

Why the first attempt (commit 034edb2) failed: a megactllm checkpoint is two dist_checkpointing
saves (model/ and optimizer/), and it scheduled them as two async requests. megatron-core's
TemporalAsyncCaller forks one writer process per request, so both ran at the same time, and every
FileSystemWriterAsync of a process hands its write results back through ONE process-wide queue
(filesystem_async._results_queue). Each request's finalize step takes "the next" result from that
queue and writes it into its directory's storage index (.metadata). Whichever writer finished
first had its results taken by the model's finalize: when the optimizer's writer won the race, the
model's .metadata indexed the optimizer's files, and loading the model failed with a KeyError in
the storage metadata (`embedding.word_embeddings.weight`, or any other key). Timing decided it,
which is why it passed in one tree and failed in a clean clone.

Here one checkpoint is ONE async request: its background process writes the parts one after the
other, so their results enter the queue in the order the finalize steps take them out. Before
anything is published each part's storage index is checked to cover every tensor it declares.
"""
from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import torch

# Fault injection for tests: "<iteration dir name>:<seconds>" makes the background writer of that
# checkpoint sleep before writing, so a test can kill the job while the write is in flight.
SLOW_WRITE_ENV = "MEGACTLLM_TEST_SLOW_ASYNC_WRITE"


def _injected_delay(label: str) -> float:
    name, _, seconds = os.environ.get(SLOW_WRITE_ENV, "").partition(":")
    return float(seconds) if name and name == label else 0.0


class StorageIndexError(RuntimeError):
    pass


def _write_parts_in_order(rank: int, preloaded_parts, parts, label: str = "") -> None:
    """Body of the background process: each part's writer, one after another."""
    time.sleep(_injected_delay(label))
    for (fn, args, kwargs), buckets in zip(parts, preloaded_parts):
        args = list(args)
        if buckets is not None:
            args[1] = buckets  # megatron's convention: argument 1 holds the (preloaded) write buckets
        fn(*args, **kwargs)


def combine_requests(requests: list, after_all, label: str = "") -> "AsyncRequest":  # noqa: F821
    """One AsyncRequest that writes every part in order, finalizes them in order, then `after_all`.

    `label` names the checkpoint (its iteration directory) for the test fault injection only.
    """
    from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest

    writing = [r for r in requests if r.async_fn is not None]  # a rank may have nothing to write

    def preload():
        return [r.preload_fn() if r.preload_fn is not None else None for r in writing]

    finalize = [fn for r in requests for fn in r.finalize_fns] + [after_all]
    parts = [(r.async_fn, r.async_fn_args, r.async_fn_kwargs) for r in writing]
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return AsyncRequest(
        _write_parts_in_order, (rank, None, parts), finalize, async_fn_kwargs={"label": label}, preload_fn=preload
    )


def check_storage_index(checkpoint_dir: str | os.PathLike) -> None:
    """Every chunk a dist_checkpointing directory declares must have a storage entry in its index.

    Cheap (one pickle read) and exactly what a mismatched finalize breaks; raises naming the
    directory and the first key without data.
    """
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

    path = Path(checkpoint_dir) / ".metadata"
    try:
        with open(path, "rb") as f:
            metadata = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise StorageIndexError(f"{path}: storage index unreadable ({e})") from None
    stored = set(metadata.storage_data or {})
    for fqn, item in metadata.state_dict_metadata.items():
        if isinstance(item, TensorStorageMetadata):
            wanted = [MetadataIndex(fqn, chunk.offsets) for chunk in item.chunks]
        else:
            wanted = [MetadataIndex(fqn)]
        for index in wanted:
            if index not in stored:
                raise StorageIndexError(f"{path}: {fqn} (offset {tuple(index.offset or ())}) has no stored data")
