#!/usr/bin/env python
"""Benchmark: corpus -> tokens, against references measured in the same run.

Corpus: ../shared/data/corpus/* (Chinese web text, English C4, en-zh news commentary) repeated
into one jsonl of --mb megabytes; tokenizer: ../shared/data/tokenizers/map_neo_sp.model.

Prints tokens/s and three ratios (higher is better for us):
  (a) our pipeline (read jsonl, tokenize, write .bin/.idx), 1 worker, over tokenizer-only encoding
      of the same texts already in memory: the limit.                                  target >= 0.9
  (b) our pipeline over the same tokenization done the way Megatron-LM's
      tools/preprocess_data.py does it: a Pool of workers (imap, 32 lines per task) that
      json.loads and encode each line, the parent writing each document through
      megatron-core's IndexedDatasetBuilder; --workers (default all CPUs) on both sides
      (the 1-worker figure is printed too). Megatron-style workers are processes; ours are
      what preprocess plans for them (plan_workers: SentencePiece encode threads in one process
      up to THREADS_PER_PROCESS, processes beyond).                                     target >= 1.5
  (c) the C++ builder over megatron-core's Python IndexedDatasetBuilder on the same token arrays
      cut into many small documents (per-document calls from Python for both).         target >= 5
Each measurement is repeated --repeats times, interleaved, and the best time is kept; the CPU
seconds of all processes are shown too, since a shared machine makes wall-clock ratios noisy.
All pipeline outputs, ours and Megatron-style, are checked to be byte-identical.

    python bench/preprocess.py            # 50 MB, 3 repeats
    python bench/preprocess.py --quick    # 8 MB, 1 repeat
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MEGACTLLM_SHARED_DATA", REPO.parent / "shared" / "data"))


def corpus_texts(data: Path) -> list:
    corpus = data / "corpus"
    texts = [l for l in (corpus / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines() if l.strip()]
    with open(corpus / "c4_demo_en.jsonl", encoding="utf-8") as f:
        texts += [json.loads(l)["text"] for l in f if l.strip()]
    for line in (corpus / "news_commentary_en_zh.tsv").read_text(encoding="utf-8").splitlines():
        texts += [part for part in line.split("\t") if part.strip()]
    return texts


def write_corpus(texts: list, path: Path, megabytes: float) -> int:
    lines = [json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts]
    target, written = int(megabytes * 1e6), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            for line in lines:
                f.write(line)
                written += len(line.encode("utf-8"))
                if written >= target:
                    break
    return written


def best_of(times: dict, key: str, seconds: float) -> None:
    times[key] = min(times.get(key, float("inf")), seconds)


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its reaped children (worker pools)."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def timed(times: dict, cpu: dict, key: str, fn, *args):
    """Runs fn, keeping the best wall time and the best CPU time under `key`."""
    c0 = cpu_seconds()
    start = time.perf_counter()
    out = fn(*args)
    best_of(times, key, time.perf_counter() - start)
    best_of(cpu, key, cpu_seconds() - c0)
    return out


def tokenizer_only(tok, texts: list, batch_docs: int = 4096, batch_bytes: int = 1 << 20) -> float:
    # Same batching as the pipeline's reader, texts already decoded in memory.
    start = time.perf_counter()
    batch, size = [], 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if len(batch) >= batch_docs or size >= batch_bytes:
            tok.encode_batch(batch)
            batch, size = [], 0
    if batch:
        tok.encode_batch(batch)
    return time.perf_counter() - start


def ours(corpus: Path, model: str, prefix: str, workers: int) -> tuple:
    from megactllm.data.pretrain.preprocess import PreprocessConfig, preprocess

    start = time.perf_counter()
    summary = preprocess(PreprocessConfig(
        input=[str(corpus)], output_prefix=prefix, tokenizer_type="sentencepiece", tokenizer_model=model,
        append_eod=True, workers=workers,
    ))
    return time.perf_counter() - start, summary.tokens


class _MegatronEncoder:
    """Megatron-LM tools/preprocess_data.py's Encoder: json.loads, tokenize, append eod, per line."""

    def __init__(self, model: str) -> None:
        self.model = model

    def initializer(self) -> None:
        from megactllm.tokenizer import load_tokenizer

        _MegatronEncoder.tok = load_tokenizer("sentencepiece", self.model)

    def encode(self, line: str):
        ids = _MegatronEncoder.tok.encode(json.loads(line)["text"])
        ids.append(_MegatronEncoder.tok.eod_id)
        return ids, [len(ids)], len(line)


def megatron_style(corpus: Path, model: str, vocab_size: int, prefix: str, workers: int) -> float:
    """Megatron-LM's preprocess_data structure: a Pool of `workers` encodes lines (imap, chunks of 32)
    and the parent writes each document through megatron-core's IndexedDatasetBuilder."""
    import multiprocessing

    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    start = time.perf_counter()
    encoder = _MegatronEncoder(model)
    builder = IndexedDatasetBuilder(prefix + "_text_document.bin", dtype=DType.optimal_dtype(vocab_size))
    with open(corpus, encoding="utf-8") as fin, multiprocessing.get_context("fork").Pool(
        workers, initializer=encoder.initializer
    ) as pool:
        for ids, lens, _ in pool.imap(encoder.encode, fin, 32):
            builder.add_document(ids, lens)
    builder.finalize(prefix + "_text_document.idx")
    return time.perf_counter() - start


def small_documents(tok, texts: list, n_docs: int) -> list:
    ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in tok.encode_batch(texts[:3000])])
    rng = np.random.default_rng(0)
    cuts = np.cumsum(rng.integers(4, 48, size=n_docs))
    ids = np.resize(ids, int(cuts[-1]))
    return np.split(ids, cuts[:-1])


def builders(docs: list, workdir: Path, times: dict, cpu: dict) -> None:
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megactllm.data.pretrain.indexed import IndexedDatasetWriter

    tensors = [torch.from_numpy(d) for d in docs]

    def megatron_builder() -> None:
        ref = IndexedDatasetBuilder(str(workdir / "mc.bin"), dtype=np.uint16)
        for t in tensors:
            ref.add_item(t)
            ref.end_document()
        ref.finalize(str(workdir / "mc.idx"))

    def cpp_per_document() -> None:
        w = IndexedDatasetWriter(str(workdir / "cpp"), dtype=np.uint16, sync=False)  # megatron-core does not fsync
        for d in docs:
            w.add_document(d)
        w.finalize()

    flat, lengths = np.concatenate(docs), np.array([len(d) for d in docs])

    def cpp_batched() -> None:
        w = IndexedDatasetWriter(str(workdir / "cpp_batch"), dtype=np.uint16, sync=False)
        w.add_documents(flat, lengths)
        w.finalize()

    timed(times, cpu, "b_megatron", megatron_builder)
    timed(times, cpu, "b_cpp", cpp_per_document)
    timed(times, cpu, "b_batch", cpp_batched)
    for ext in (".bin", ".idx"):
        assert (workdir / f"mc{ext}").read_bytes() == (workdir / f"cpp{ext}").read_bytes(), "builders disagree"


def measure_in_child(times: dict, cpu: dict, key: str, kind: str, corpus: Path, model: str, prefix: str,
                     workers: int) -> dict:
    """Runs one pipeline measurement in a fresh process, so that neither side pays for forking this
    big benchmark process (torch, the corpus in memory) into its workers."""
    cmd = [sys.executable, os.path.abspath(__file__), "--measure", kind, "--corpus", str(corpus), "--model", model,
           "--prefix", prefix, "--workers", str(workers)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"measurement {kind} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    best_of(times, key, result["wall"])
    best_of(cpu, key, result["cpu"])
    return result


def child_measure(args) -> int:
    import megatron.core.datasets.indexed_dataset  # noqa: F401  (imports are not part of the work)
    import torch  # noqa: F401

    import megactllm.data.pretrain.preprocess  # noqa: F401
    from megactllm.tokenizer import load_tokenizer

    tok = load_tokenizer("sentencepiece", args.model)
    if args.measure == "encode":
        with open(args.corpus, encoding="utf-8") as f:
            texts = [json.loads(l)["text"] for l in f]
    c0, t0 = cpu_seconds(), time.perf_counter()
    tokens = None
    if args.measure == "encode":
        tokenizer_only(tok, texts)
    elif args.measure == "ours":
        tokens = ours(Path(args.corpus), args.model, args.prefix, args.workers)[1]
    elif args.measure == "megatron":
        megatron_style(Path(args.corpus), args.model, tok.vocab_size, args.prefix, args.workers)
    print(json.dumps({"wall": time.perf_counter() - t0, "cpu": cpu_seconds() - c0, "tokens": tokens}))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data directory")
    p.add_argument("--mb", type=float, default=50.0, help="corpus size in MB (the real corpus repeated)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--small-docs", type=int, default=1_000_000, help="documents for the builder comparison (c)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="workers for ratio (b), the same for both sides (default: all CPUs)")
    p.add_argument("--quick", action="store_true", help="8 MB, 1 repeat, 200k small documents")
    p.add_argument("--workdir", type=Path, default=None, help="where to put the corpus and outputs (default: a temp dir)")
    # Internal: one measurement in a child process.
    p.add_argument("--measure", choices=["encode", "ours", "megatron"], help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        return child_measure(args)
    if args.quick:
        args.mb, args.repeats, args.small_docs = min(args.mb, 8.0), 1, min(args.small_docs, 200_000)
    model = args.data / "tokenizers" / "map_neo_sp.model"
    if not model.exists():
        print(f"error: {model} is absent; this benchmark needs ../shared/data", file=sys.stderr)
        return 1

    # Import everything up front: first-import time (torch, megatron-core) must not count as work.
    import megatron.core.datasets.indexed_dataset  # noqa: F401
    import torch  # noqa: F401

    import megactllm.data.pretrain.preprocess  # noqa: F401
    from megactllm.tokenizer import load_tokenizer

    tok = load_tokenizer("sentencepiece", str(model))
    workdir = Path(tempfile.mkdtemp(prefix="bench_preprocess_", dir=args.workdir))
    try:
        texts = corpus_texts(args.data)
        corpus = workdir / "corpus.jsonl"
        nbytes = write_corpus(texts, corpus, args.mb)
        with open(corpus, encoding="utf-8") as f:
            all_texts = [json.loads(l)["text"] for l in f]
        print(f"corpus: {nbytes / 1e6:.1f} MB, {len(all_texts):,} documents (real corpus repeated); "
              f"tokenizer {model.name} (vocab {tok.vocab_size:,}); {os.cpu_count()} CPUs; best of {args.repeats}")

        times, cpu, tokens = {}, {}, 0
        w = args.workers
        for r in range(args.repeats):
            measure_in_child(times, cpu, "encode", "encode", corpus, str(model), "", 1)
            tokens = measure_in_child(times, cpu, "ours", "ours", corpus, str(model), str(workdir / "ours"), 1)["tokens"]
            measure_in_child(times, cpu, "megatron_1", "megatron", corpus, str(model), str(workdir / "mc1"), 1)
            if w > 1:
                measure_in_child(times, cpu, "ours_w", "ours", corpus, str(model), str(workdir / "ours_w"), w)
                measure_in_child(times, cpu, "megatron", "megatron", corpus, str(model), str(workdir / "mc"), w)
        if w == 1:
            times["ours_w"], cpu["ours_w"] = times["ours"], cpu["ours"]
            times["megatron"], cpu["megatron"] = times["megatron_1"], cpu["megatron_1"]
            for ext in (".bin", ".idx"):
                shutil.copy(workdir / f"mc1_text_document{ext}", workdir / f"mc_text_document{ext}")
                shutil.copy(workdir / f"ours_text_document{ext}", workdir / f"ours_w_text_document{ext}")
        for other in ("mc", "mc1", "ours_w"):
            for ext in (".bin", ".idx"):
                a = (workdir / f"ours_text_document{ext}").read_bytes()
                b = (workdir / f"{other}_text_document{ext}").read_bytes()
                assert a == b, f"{other}{ext} differs from our 1-worker output"

        docs = small_documents(tok, texts, args.small_docs)
        n_small = sum(len(d) for d in docs)
        for r in range(args.repeats):
            builders(docs, workdir, times, cpu)

        rate = lambda key: tokens / times[key]

        def row(label: str, key: str, extra: str = "") -> None:
            print(f"  {label:36s} {rate(key):>12,.0f} tokens/s  {times[key]:7.2f} s wall  {cpu[key]:7.2f} s CPU{extra}")

        print(f"\ntokens: {tokens:,}")
        row("tokenizer only (in memory)", "encode")
        row("megactllm preprocess, 1 worker", "ours", f"   {nbytes / 1e6 / times['ours']:.1f} MB/s")
        row("Megatron-LM style, 1 worker", "megatron_1")
        if w > 1:
            from megactllm.data.pretrain.preprocess import plan_workers

            procs, threads = plan_workers(w, tok)
            row(f"megactllm preprocess, {w} workers", "ours_w", f"   ({procs} process(es) x {threads} thread(s))")
            row(f"Megatron-LM style, {w} workers", "megatron")
        print(f"\nbuilder only: {len(docs):,} documents of 4-47 tokens ({n_small:,} tokens)")
        print(f"  megatron-core IndexedDatasetBuilder  {len(docs) / times['b_megatron']:>12,.0f} docs/s   {times['b_megatron']:6.2f} s")
        print(f"  C++ builder, per-document calls      {len(docs) / times['b_cpp']:>12,.0f} docs/s   {times['b_cpp']:6.2f} s")
        print(f"  C++ builder, one batched call        {len(docs) / times['b_batch']:>12,.0f} docs/s   {times['b_batch']:6.2f} s")
        def ratio(label: str, slow: str, fast: str, target: float = 0.0) -> None:
            wall, used = times[slow] / times[fast], cpu[slow] / cpu[fast]
            mark = f"  target >= {target}: {'PASS' if wall >= target else 'FAIL'}" if target else ""
            print(f"  {label:52s} {wall:6.2f}x wall  {used:6.2f}x CPU{mark}")

        print("\nratios (wall: best elapsed time; CPU: best CPU seconds of all processes, less sensitive to a busy machine)")
        ratio("(a) pipeline vs tokenizer-only, 1 worker", "encode", "ours", 0.9)
        ratio(f"(b) pipeline vs Megatron-style, {w} worker(s) each", "megatron", "ours_w", 1.5)
        if w > 1:
            ratio("    pipeline vs Megatron-style, 1 worker each", "megatron_1", "ours")
        ratio("(c) C++ builder vs mcore builder, small documents", "b_megatron", "b_cpp", 5)
        ratio("    C++ builder batched vs mcore builder", "b_megatron", "b_batch")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
