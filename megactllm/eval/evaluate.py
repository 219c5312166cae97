"""One evaluation run, as tools/evaluate.py asks for it: pick the backend from what --model is,
score the tasks, write results.json + results.md (rank 0).

A Hugging Face directory (config.json) goes through transformers. A megactllm checkpoint (an
iteration directory or a run directory with a latest pointer) is loaded at this launch's TP/PP
layout (the rest of the world is data parallel), under torchrun or as a single process.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from megactllm.eval.tasks import BENCHMARKS

TASKS = tuple(b for b in BENCHMARKS) + ("bpb",)


@dataclass
class EvalOptions:
    model: str
    tasks: list[str]
    data_dir: Optional[str] = None
    subjects: list[str] = field(default_factory=list)
    shots: int = 0
    mode: str = "loglikelihood"
    limit: Optional[int] = None
    output: Optional[str] = None
    log_samples: bool = False
    corpus: list[str] = field(default_factory=list)
    stride: Optional[int] = None
    max_length: Optional[int] = None
    max_documents: Optional[int] = None
    text_key: str = "text"
    batch_size: int = 8
    dtype: str = "fp32"
    tensor_parallel: int = 1
    pipeline_parallel: int = 1


def is_hf_dir(path) -> bool:
    return (Path(path) / "config.json").is_file()


def benchmark_dir(data_dir: str, task: str, n_tasks: int) -> Path:
    """DATA_DIR/<task> (a root like ../shared/data/eval), or DATA_DIR itself for a single task."""
    root = Path(data_dir)
    if (root / task).is_dir():
        return root / task
    if n_tasks == 1:
        return root
    raise FileNotFoundError(f"{root / task} does not exist: --data-dir should hold {task}/ (e.g. ../shared/data/eval)")


def subjects_for(task: str, names: list[str], n_tasks: int) -> Optional[list[str]]:
    """`task:subject` names one task's subject; a bare name applies to every task (or, with
    several tasks, to those whose own names it does not clash with: give `cmmlu:agronomy`)."""
    own = [n.split(":", 1)[1] for n in names if n.startswith(task + ":")]
    bare = [n for n in names if ":" not in n]
    qualified_elsewhere = any(":" in n for n in names) and not own
    if qualified_elsewhere and not bare:
        return None if n_tasks == 1 else []
    return (own + bare) or None


def build_backend(opts: EvalOptions):
    if is_hf_dir(opts.model):
        from megactllm.eval.backends.hf import HFBackend

        return HFBackend(opts.model, dtype=opts.dtype, batch_size=opts.batch_size, max_length=opts.max_length)
    from megactllm.config import ParallelConfig
    from megactllm.eval.backends.parallel import ParallelBackend
    from megactllm.parallel import initialize_parallel
    from megactllm.training.checkpoint import read_metadata

    if "RANK" not in os.environ and "MASTER_PORT" not in os.environ:
        from megactllm.testing.distributed import free_port

        os.environ["MASTER_PORT"] = str(free_port())  # a single process must not collide with a neighbour's run
    meta = read_metadata(opts.model)
    parallel = ParallelConfig(tensor_model_parallel_size=opts.tensor_parallel, pipeline_model_parallel_size=opts.pipeline_parallel)
    initialize_parallel(parallel, num_layers=meta.model_config.num_layers)
    return ParallelBackend.from_checkpoint(meta.path, parallel, batch_size=opts.batch_size, max_length=opts.max_length)


def run_tasks(backend, opts: EvalOptions, stream=sys.stderr) -> dict:
    """Score opts.tasks through backend; returns the results dict (see results.py)."""
    from megactllm.eval.bpb import bits_per_byte, read_corpus
    from megactllm.eval.results import build_results
    from megactllm.eval.runner import evaluate_subjects
    from megactllm.eval.tasks import load_benchmark

    unknown = [t for t in opts.tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; tasks: {', '.join(TASKS)}")
    say = (lambda text: print(text, file=stream, flush=True)) if backend.is_reporting_rank and stream else (lambda text: None)
    started = time.perf_counter()
    scores, samples, bpb, throughput = [], {}, {}, {}
    mc_tasks = [t for t in opts.tasks if t != "bpb"]
    for task in mc_tasks:
        if not opts.data_dir:
            raise ValueError(f"task {task} needs --data-dir")
        if subjects_for(task, opts.subjects, len(mc_tasks)) == []:
            continue  # every subject named belongs to another task
        subjects = load_benchmark(task, benchmark_dir(opts.data_dir, task, len(mc_tasks)),
                                  subjects_for(task, opts.subjects, len(mc_tasks)), shots=opts.shots)
        result = evaluate_subjects(backend, subjects, shots=opts.shots, mode=opts.mode, limit=opts.limit,
                                   log_samples=opts.log_samples, progress_stream=stream)
        scores += result.scores
        samples.update(result.samples)
        throughput[task] = round(result.questions_per_s, 3)
        say(f"{task}: {result.questions} questions in {result.seconds:.1f}s ({result.questions_per_s:.2f} questions/s)")
    if "bpb" in opts.tasks:
        if not opts.corpus:
            raise ValueError("task bpb needs --corpus (jsonl/txt/parquet files, globs or directories)")
        documents, skips = read_corpus(opts.corpus, opts.text_key, opts.max_documents)
        if skips:
            say(f"WARNING: {len(skips)} corpus record(s) skipped, first at {skips[0].where()}: {skips[0].reason}")
        value = bits_per_byte(backend, documents, opts.stride, opts.max_length, stream, len(skips))
        name = Path(opts.corpus[0]).stem.split(".")[0] if len(opts.corpus) == 1 else "corpus"
        bpb[name] = value.as_dict()
        say(f"bits per byte of {name}: {value.bits_per_byte:.4f} ({value.tokens} tokens, {value.bytes} bytes)")
    config = dict(model=str(opts.model), backend=backend.name, tasks=opts.tasks, shots=opts.shots, mode=opts.mode,
                  limit=opts.limit, dtype=opts.dtype, batch_size=opts.batch_size, max_length=backend.max_length,
                  stride=opts.stride, questions_per_s=throughput, seconds=round(time.perf_counter() - started, 2))
    return build_results(scores, bpb, config, samples if opts.log_samples else None)


def evaluate(opts: EvalOptions, stream=sys.stderr) -> dict:
    from megactllm.eval.results import markdown_table, write_results

    backend = build_backend(opts)
    try:
        results = run_tasks(backend, opts, stream)
        if backend.is_reporting_rank:
            if opts.output:
                json_path, md_path = write_results(results, opts.output)
                print(f"wrote {json_path} and {md_path}", file=stream, flush=True)
            print(markdown_table(results), flush=True)
        return results
    finally:
        if backend.name == "parallel":
            from megactllm.parallel import destroy_parallel

            destroy_parallel()
