"""Corpus to Megatron indexed datasets: read, tokenize, write; with workers, progress and a summary.

    summary = preprocess(PreprocessConfig(input=["corpus/"], output_prefix="out/zh",
                                          tokenizer_type="sentencepiece", tokenizer_model="sp.model",
                                          append_eod=True, workers=4), report=print)

Outputs are `{output_prefix}_{key}_document.{bin,idx,json}` (merged), or with `per_shard`
`{output_prefix}_{input stem}_{key}_document.*`, one per input file.

In one process a reader thread parses the next batch while the tokenizer (which releases the GIL)
encodes the current one, and token lists go straight into the C++ builder. `workers` are tokenizer
threads first: a tokenizer that encodes a batch on several native threads (SentencePiece) runs up
to THREADS_PER_PROCESS workers in this one process, with no fork, no temporary datasets and no
copy. Beyond that, or with a single-threaded tokenizer, each chunk of input is tokenized in a worker
process (itself using up to THREADS_PER_PROCESS threads) into a temporary dataset that the parent
appends (a streaming copy) in input order, so no token crosses a pipe.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import queue
import threading
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from megactllm.common.progress import Progress as ProgressBase
from megactllm.errors import UserError
from megactllm.data.pretrain.indexed import (
    IndexedDatasetWriter,
    dtype_for_vocab,
)
from megactllm.common.corpus import (
    SKIP_REASONS,
    Batch,
    Chunk,
    Skip,
    expand_inputs,
    plan_chunks,
    read_batches,
    strip_compression,
)
from megactllm.tokenizer import Tokenizer, load_tokenizer

Report = Callable[[str], None]

# Native encode threads per process. The GIL-bound share of the work (reading, JSON, handing token
# lists to the builder) is about a tenth of encoding, so one process keeps a few threads busy.
THREADS_PER_PROCESS = 4


def plan_workers(workers: int, tokenizer: Tokenizer) -> tuple[int, int]:
    """(processes, encode threads per process) for `workers` parallel tokenizer workers."""
    if not hasattr(tokenizer, "num_threads"):  # no native batch threads: one process per worker
        return workers, 1
    processes = -(-workers // THREADS_PER_PROCESS)
    return processes, -(-workers // processes)


class PreprocessError(UserError, RuntimeError):
    """A record refused under --strict, or an input that cannot be processed."""


@dataclass
class PreprocessConfig:
    input: Sequence[str]
    output_prefix: str
    tokenizer_type: str
    tokenizer_model: str
    json_keys: Sequence[str] = ("text",)
    append_eod: bool = False
    workers: int = 1
    strict: bool = False
    per_shard: bool = False
    input_format: str | None = None
    chunk_bytes: int = 16 << 20
    log_interval: float = 2.0
    max_reported_skips: int = 5


@dataclass
class PreprocessSummary:
    documents: int = 0
    tokens: int = 0
    text_bytes: int = 0
    seconds: float = 0.0
    skipped: Counter = field(default_factory=Counter)
    first_skips: list = field(default_factory=list)  # "file:line reason (detail)"
    outputs: list = field(default_factory=list)  # dataset prefixes written

    def format(self) -> str:
        secs = max(self.seconds, 1e-9)
        lines = [
            (f"documents: {self.documents:,}   tokens: {self.tokens:,}   text: {self.text_bytes / 1e6:,.1f} MB   "
             f"time: {self.seconds:,.1f} s"),
            (f"throughput: {self.documents / secs:,.0f} docs/s, {self.text_bytes / 1e6 / secs:,.2f} MB/s, "
             f"{self.tokens / secs:,.0f} tokens/s"),
            f"skipped: {sum(self.skipped.values()):,} records",
        ]
        for reason in SKIP_REASONS:
            if self.skipped.get(reason):
                lines.append(f"  {reason:15s} {self.skipped[reason]:>10,}   ({SKIP_REASONS[reason]})")
        if self.first_skips:
            lines.append("first skipped records:")
            lines.extend(f"  {s}" for s in self.first_skips)
        lines.append("outputs:")
        lines.extend(f"  {p}.bin/.idx" for p in self.outputs)
        return "\n".join(lines)


def output_prefix_for(output_prefix: str, key: str, shard: str | None = None) -> str:
    """Megatron's naming: {prefix}_{key}_document (with the shard's stem in per-shard mode)."""
    middle = f"_{shard}" if shard else ""
    return f"{output_prefix}{middle}_{key}_document"


def shard_name(path: str) -> str:
    base = os.path.basename(strip_compression(path)[0])
    return os.path.splitext(base)[0]


# ---------------------------------------------------------------------------------------------
# Progress


class Progress(ProgressBase):
    """Counts documents, tokens, text bytes and raw (on-disk) bytes; the ETA is in raw bytes."""

    def __init__(self, total_raw_bytes: int, report: Report | None, interval: float) -> None:
        super().__init__(total=max(total_raw_bytes, 1), interval=interval, out=report)
        self.docs = self.tokens = self.text_bytes = 0

    @property
    def raw_bytes(self) -> int:
        return self.done

    def add(self, docs: int, tokens: int, text_bytes: int, raw_bytes: int) -> None:
        self.docs += docs
        self.tokens += tokens
        self.text_bytes += text_bytes
        self.advance(raw_bytes)

    def line(self, now: float | None = None) -> str:
        secs = self.elapsed(now)
        done = self.fraction()
        if done > 0:
            left = int(secs * (1 - done) / done)
            eta_text = f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"  # hours may pass 24
        else:
            eta_text = "?"
        return (
            f"[preprocess] {self.docs:,} docs, {self.docs / secs:,.0f} docs/s | {self.text_bytes / 1e6:,.1f} MB, "
            f"{self.text_bytes / 1e6 / secs:,.2f} MB/s | {self.tokens:,} tokens, {self.tokens / secs:,.0f} tokens/s | "
            f"{100 * done:.0f}% | ETA {eta_text}"
        )


# ---------------------------------------------------------------------------------------------
# Tokenizing one chunk (shared by the in-process path and the worker processes)


class _StrictFailure(Exception):
    """A bad record under --strict, raised in a worker; the parent adds the line base."""

    def __init__(self, skip: Skip) -> None:
        super().__init__(f"{skip.path}:{skip.line} {skip.reason}")
        self.skip = skip

    def __reduce__(self):
        # Pickled back from a worker: a wrong signature here would hang multiprocessing's pool.
        return (_StrictFailure, (self.skip,))


@dataclass
class ChunkStats:
    documents: int = 0
    tokens: int = 0
    text_bytes: int = 0
    lines: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_skips: list = field(default_factory=list)  # Skip objects with chunk-relative lines


def _prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """Runs `items` in a thread, `depth` ahead: parsing overlaps with native tokenization."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(entry) -> bool:
        # A bounded put that gives up once the consumer has gone, so join() below cannot hang.
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((done, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            offer((done, exc))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        thread.join()


def tokenize_chunk(
    chunk: Chunk,
    tokenizer: Tokenizer,
    writers: dict,
    keys: Sequence[str],
    append_eod: bool,
    strict: bool,
    max_skips: int,
    on_batch: Callable[[Batch, int, int], None] | None = None,
) -> ChunkStats:
    """Tokenizes every document of `chunk` into `writers[key]`; bad records are counted, or raised when strict."""
    stats = ChunkStats()
    eod = tokenizer.eod_id if append_eod else None
    utf8_bytes = getattr(tokenizer, "accepts_utf8_bytes", False)
    for batch in _prefetch(read_batches(chunk, keys, utf8_bytes=utf8_bytes)):
        if batch.skips:
            if strict:
                raise _StrictFailure(batch.skips[0])
            stats.skipped.update(s.reason for s in batch.skips)
            stats.first_skips.extend(batch.skips[: max(0, max_skips - len(stats.first_skips))])
        n_docs = len(batch.texts[keys[0]])
        before = sum(w.num_tokens for w in writers.values())
        if n_docs:
            for key in keys:
                writers[key].add_token_lists(tokenizer.encode_batch(batch.texts[key]), eod)
        tokens = sum(w.num_tokens for w in writers.values()) - before
        stats.documents += n_docs
        stats.tokens += tokens
        stats.text_bytes += batch.text_bytes
        stats.lines += batch.lines
        if on_batch is not None:
            on_batch(batch, n_docs, tokens)
    return stats


# ---------------------------------------------------------------------------------------------
# Worker processes

_worker_tokenizer: Tokenizer | None = None
_worker_progress = None


def _init_worker(tokenizer_type: str, tokenizer_model: str, progress_queue, threads: int = 1) -> None:
    global _worker_tokenizer, _worker_progress
    _worker_tokenizer = load_tokenizer(tokenizer_type, tokenizer_model)
    if threads > 1:
        _worker_tokenizer.num_threads = threads
    _worker_progress = progress_queue


def _work(task: tuple) -> ChunkStats:
    chunk, part_prefixes, keys, append_eod, strict, max_skips, dtype = task
    writers = {key: IndexedDatasetWriter(part_prefixes[key], dtype=dtype, sync=False) for key in keys}

    def on_batch(batch: Batch, docs: int, tokens: int) -> None:
        _worker_progress.put((docs, tokens, batch.text_bytes, batch.raw_bytes))

    try:
        stats = tokenize_chunk(chunk, _worker_tokenizer, writers, keys, append_eod, strict, max_skips, on_batch)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    for w in writers.values():
        w.finalize()
    return stats


def _remove_dataset(prefix: str) -> None:
    for suffix in (".bin", ".idx", ".json"):
        try:
            os.remove(prefix + suffix)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------------------------
# The driver


class _Outputs:
    """Final writers: one set for everything, or one set per input file (per_shard)."""

    def __init__(self, config: PreprocessConfig, tokenizer: Tokenizer, paths: Sequence[str]) -> None:
        self.config, self.tokenizer = config, tokenizer
        self.dtype = dtype_for_vocab(tokenizer.vocab_size)
        self.open: dict = {}  # shard (or None) -> {key: writer}
        self.finished: list[str] = []
        self.sources: dict = {}
        self.skipped: dict = {}  # shard -> Counter of skip reasons, for the sidecar
        if config.per_shard:
            names = Counter(shard_name(p) for p in paths)
            clashes = sorted(n for n, c in names.items() if c > 1)
            if clashes:
                raise PreprocessError(
                    f"per-shard outputs would collide: several inputs are named {clashes}; rename them or merge"
                )

    def shard_of(self, path: str) -> str | None:
        return shard_name(path) if self.config.per_shard else None

    def writers(self, path: str) -> dict:
        shard = self.shard_of(path)
        if shard not in self.open:
            metadata = dict(self.tokenizer.describe(), append_eod=self.config.append_eod)
            metadata["model_path"] = os.path.abspath(self.tokenizer.model_path)  # usable from any directory
            self.open[shard] = {
                key: IndexedDatasetWriter(
                    output_prefix_for(self.config.output_prefix, key, shard),
                    dtype=self.dtype,
                    metadata=dict(metadata, json_key=key),
                )
                for key in self.config.json_keys
            }
            self.sources[shard] = []
            self.skipped[shard] = Counter()
        if path not in self.sources[shard]:
            self.sources[shard].append(path)
        return self.open[shard]

    def count_skips(self, path: str, skipped: Counter) -> None:
        self.skipped[self.shard_of(path)].update(skipped)

    def finish(self, shard: str | None) -> None:
        for writer in self.open.pop(shard).values():
            writer.metadata["sources"] = self.sources[shard][:1000]
            writer.metadata["skipped"] = dict(self.skipped[shard])
            writer.finalize()
            self.finished.append(writer.prefix)

    def finish_all(self) -> None:
        for shard in list(self.open):
            self.finish(shard)

    def abort(self) -> None:
        for writers in self.open.values():
            for writer in writers.values():
                writer.abort()
        self.open.clear()


def preprocess(config: PreprocessConfig, report: Report | None = None) -> PreprocessSummary:
    """Tokenizes `config.input` into indexed datasets; returns what was done (and reports progress)."""
    if not config.json_keys:
        raise PreprocessError("no --json-keys given")
    if config.workers < 1:
        raise PreprocessError(f"--workers must be at least 1, got {config.workers}")
    paths = expand_inputs(config.input)
    tokenizer = load_tokenizer(config.tokenizer_type, config.tokenizer_model)
    processes, threads = plan_workers(config.workers, tokenizer)
    chunk_bytes = config.chunk_bytes
    if processes > 1:  # enough chunks to keep every worker process busy until the end
        total = sum(os.path.getsize(p) for p in paths)
        chunk_bytes = min(chunk_bytes, max(1 << 20, total // (4 * processes)))
    chunks = plan_chunks(paths, chunk_bytes, config.input_format)
    outputs = _Outputs(config, tokenizer, paths)
    progress = Progress(sum(c.raw_bytes for c in chunks), report, config.log_interval)
    summary = PreprocessSummary()
    if report:
        report(
            f"[preprocess] {len(paths)} input file(s), {len(chunks)} chunk(s), {progress.total / 1e6:,.1f} MB, "
            f"tokenizer {tokenizer.model_path} (vocab {tokenizer.vocab_size:,}, dtype {outputs.dtype}), "
            f"{config.workers} worker(s): {processes} process(es) x {threads} encode thread(s)"
        )
    try:
        if processes == 1:
            if threads > 1:
                tokenizer.num_threads = threads
            _run_in_process(config, chunks, tokenizer, outputs, progress, summary)
        else:
            _run_workers(config, chunks, outputs, progress, summary, processes, threads)
        outputs.finish_all()
    except BaseException:
        outputs.abort()
        raise
    summary.seconds = time.monotonic() - progress.start
    summary.outputs = outputs.finished
    if report:
        report(progress.line(time.monotonic()))
    return summary


def _absorb(summary: PreprocessSummary, stats: ChunkStats, line_base: int, max_skips: int) -> None:
    summary.documents += stats.documents
    summary.tokens += stats.tokens
    summary.text_bytes += stats.text_bytes
    summary.skipped.update(stats.skipped)
    for skip in stats.first_skips:
        if len(summary.first_skips) < max_skips:
            summary.first_skips.append(f"{skip.where(line_base)} {skip.reason} ({skip.detail})")


def _strict_error(skip: Skip, line_base: int) -> PreprocessError:
    return PreprocessError(
        f"{skip.where(line_base)}: {skip.reason} ({skip.detail}); {SKIP_REASONS[skip.reason]}. "
        "Fix the record, or drop --strict to skip and count such records"
    )


def _line_base(chunk: Chunk, lines_seen: dict) -> int:
    return chunk.line_base if chunk.line_base is not None else lines_seen.get(chunk.path, 0)


def _after_chunk(chunk: Chunk, chunks: Sequence[Chunk], i: int, outputs: _Outputs, stats: ChunkStats) -> None:
    outputs.count_skips(chunk.path, stats.skipped)
    last_of_shard = i + 1 == len(chunks) or outputs.shard_of(chunks[i + 1].path) != outputs.shard_of(chunk.path)
    if outputs.config.per_shard and last_of_shard:
        outputs.finish(outputs.shard_of(chunk.path))


def _run_in_process(config, chunks, tokenizer, outputs, progress, summary) -> None:
    lines_seen: dict = {}

    def on_batch(batch: Batch, docs: int, tokens: int) -> None:
        progress.add(docs, tokens, batch.text_bytes, batch.raw_bytes)

    for i, chunk in enumerate(chunks):
        base = _line_base(chunk, lines_seen)
        try:
            stats = tokenize_chunk(
                chunk, tokenizer, outputs.writers(chunk.path), config.json_keys, config.append_eod,
                config.strict, config.max_reported_skips, on_batch,
            )
        except _StrictFailure as failure:
            raise _strict_error(failure.skip, base) from None
        lines_seen[chunk.path] = base + stats.lines
        _absorb(summary, stats, base, config.max_reported_skips)
        _after_chunk(chunk, chunks, i, outputs, stats)


def _run_workers(config, chunks, outputs, progress, summary, processes: int, threads: int) -> None:
    # fork: workers start at once and need no importable __main__; the parent holds no threads here.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    progress_queue = ctx.Queue()
    parts = [
        {key: f"{config.output_prefix}.part{i:06d}_{key}" for key in config.json_keys} for i in range(len(chunks))
    ]
    tasks = [
        (chunk, parts[i], tuple(config.json_keys), config.append_eod, config.strict, config.max_reported_skips,
         outputs.dtype)
        for i, chunk in enumerate(chunks)
    ]
    os.makedirs(os.path.dirname(os.path.abspath(config.output_prefix)), exist_ok=True)
    lines_seen: dict = {}

    def drain() -> None:
        while True:
            try:
                progress.add(*progress_queue.get_nowait())
            except queue.Empty:
                return

    # Objects that exist now are never collected in the workers: without this, each forked worker's
    # garbage collector walks (and so copies) the whole parent heap, e.g. torch when imported.
    gc.freeze()
    # ProcessPoolExecutor, not Pool: a worker killed by the OOM killer breaks the executor (an error)
    # instead of losing its task and leaving the parent waiting forever.
    pool = ProcessPoolExecutor(
        processes, mp_context=ctx, initializer=_init_worker,
        initargs=(config.tokenizer_type, config.tokenizer_model, progress_queue, threads),
    )
    pending: deque = deque()
    submitted = 0
    try:
        for i, chunk in enumerate(chunks):
            # A bounded window of tasks keeps every worker busy without queueing the whole input.
            while submitted < len(tasks) and len(pending) < 2 * processes:
                pending.append(pool.submit(_work, tasks[submitted]))
                submitted += 1
            future = pending.popleft()
            base = _line_base(chunk, lines_seen)
            while True:
                try:
                    stats = future.result(timeout=0.2)
                    break
                except FutureTimeout:
                    drain()
                except _StrictFailure as failure:
                    raise _strict_error(failure.skip, base) from None
                except BrokenProcessPool as exc:
                    raise PreprocessError(
                        f"a tokenizer worker died while reading {chunk.path} (killed, or out of memory?); "
                        "rerun with fewer --workers or a smaller --chunk-mb"
                    ) from exc
            drain()
            lines_seen[chunk.path] = base + stats.lines
            writers = outputs.writers(chunk.path)
            for key in config.json_keys:
                writers[key].add_dataset(parts[i][key])
                _remove_dataset(parts[i][key])
            _absorb(summary, stats, base, config.max_reported_skips)
            _after_chunk(chunk, chunks, i, outputs, stats)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # running chunks finish; their parts are removed below
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        for part in parts:
            for prefix in part.values():
                _remove_dataset(prefix)
                for suffix in (".bin.tmp", ".idx.tmp", ".idx.lengths.tmp", ".idx.docs.tmp"):
                    try:
                        os.remove(prefix + suffix)
                    except FileNotFoundError:
                        pass
        progress_queue.close()
        gc.unfreeze()

