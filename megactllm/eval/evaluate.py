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

from megactllm.eval.errors import EvalDataError, EvalInputNotFoundError, EvalSetupError
from megactllm.eval.tasks import BENCHMARKS
from megactllm.common.progress import STDERR

TASKS = tuple(b for b in BENCHMARKS) + ("bpb", "gen", "math")


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
    # gen: open questions (jsonl), answered through the chat template, rated by an optional judge
    questions_file: Optional[str] = None
    judge_url: Optional[str] = None
    judge_model: Optional[str] = None
    max_new_tokens: int = 256
    # math: {question, answer} jsonl, greedy through the chat template, scored by megactllm.rl.answers
    math_file: Optional[str] = None


def is_hf_dir(path) -> bool:
    return (Path(path) / "config.json").is_file()


def benchmark_dir(data_dir: str, task: str, n_tasks: int) -> Path:
    """DATA_DIR/<task> (a root like ../shared/data/eval), or DATA_DIR itself for a single task."""
    root = Path(data_dir)
    if (root / task).is_dir():
        return root / task
    if n_tasks == 1:
        return root
    raise EvalInputNotFoundError(f"{root / task} does not exist: --data-dir should hold {task}/ (e.g. ../shared/data/eval)")


def subjects_for(task: str, names: list[str], n_tasks: int) -> Optional[list[str]]:
    """`task:subject` names one task's subject; a bare name applies to every task (or, with
    several tasks, to those whose own names it does not clash with: give `cmmlu:agronomy`)."""
    own = [n.split(":", 1)[1] for n in names if n.startswith(task + ":")]
    bare = [n for n in names if ":" not in n]
    qualified_elsewhere = any(":" in n for n in names) and not own
    if qualified_elsewhere and not bare:
        return None if n_tasks == 1 else []
    return (own + bare) or None


def _init_parallel_for(opts: EvalOptions, num_layers: int):
    from megactllm.config import ParallelConfig
    from megactllm.parallel import initialize_parallel

    own_port = "RANK" not in os.environ and "MASTER_PORT" not in os.environ
    if own_port:
        from megactllm.common.env import free_port

        os.environ["MASTER_PORT"] = str(free_port())  # a single process must not collide with a neighbour's run
    parallel = ParallelConfig(tensor_model_parallel_size=opts.tensor_parallel, pipeline_model_parallel_size=opts.pipeline_parallel)
    try:
        initialize_parallel(parallel, num_layers=num_layers)
    finally:
        if own_port:
            # Only the rendezvous needs it. Left set, every process this one starts later (a caller
            # running evaluate in-process, then launching training) would inherit a port that this
            # process's store still holds: EADDRINUSE.
            os.environ.pop("MASTER_PORT", None)
    return parallel


def build_backend(opts: EvalOptions):
    if is_hf_dir(opts.model):
        from megactllm.eval.backends.hf import HFBackend

        return HFBackend(opts.model, dtype=opts.dtype, batch_size=opts.batch_size, max_length=opts.max_length)
    from megactllm.eval.backends.parallel import ParallelBackend
    from megactllm.checkpoint import read_metadata

    meta = read_metadata(opts.model)
    parallel = _init_parallel_for(opts, meta.model_config.num_layers)
    return ParallelBackend.from_checkpoint(meta.path, parallel, batch_size=opts.batch_size, max_length=opts.max_length)


def check_options(opts: EvalOptions) -> None:
    """Every task is known and has the flags it needs: checked before a model is loaded."""
    unknown = [t for t in opts.tasks if t not in TASKS]
    if unknown:
        raise EvalSetupError(f"unknown task(s) {unknown}; tasks: {', '.join(TASKS)}")
    for task in opts.tasks:
        if task not in ("bpb", "gen", "math") and not opts.data_dir:
            raise EvalSetupError(f"task {task} needs --data-dir")
    if "bpb" in opts.tasks and not opts.corpus:
        raise EvalSetupError("task bpb needs --corpus (jsonl/txt/parquet files, globs or directories)")
    if "gen" in opts.tasks:
        if not opts.questions_file:
            raise EvalSetupError("task gen needs --questions-file (jsonl of {question, id?, category?, reference?})")
        if bool(opts.judge_url) != bool(opts.judge_model):
            raise EvalSetupError("--judge-url and --judge-model go together")
    if "math" in opts.tasks and not opts.math_file:
        raise EvalSetupError("task math needs --math-file (jsonl of {question, answer}, e.g. ../shared/data/rl/gsm8k_test.jsonl)")


def run_tasks(backend, opts: EvalOptions, stream=STDERR) -> dict:
    """Score opts.tasks through backend; returns the results dict (see results.py)."""
    stream = sys.stderr if stream is STDERR else stream  # the stderr of now, not of import time
    from megactllm.eval.bpb import bits_per_byte, read_corpus
    from megactllm.eval.results import build_results
    from megactllm.eval.runner import evaluate_subjects
    from megactllm.eval.tasks import load_benchmark

    check_options(opts)
    say = (lambda text: print(text, file=stream, flush=True)) if backend.is_reporting_rank and stream else (lambda text: None)
    started = time.perf_counter()
    scores, samples, bpb, throughput = [], {}, {}, {}
    mc_tasks = [t for t in opts.tasks if t not in ("bpb", "gen", "math")]
    for task in mc_tasks:
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
        documents, skips = read_corpus(opts.corpus, opts.text_key, opts.max_documents)
        if not documents:
            raise EvalDataError(", ".join(map(str, opts.corpus)), f"no non-empty document under key {opts.text_key!r} "
                                f"({len(skips)} record(s) skipped); bits per byte needs text (see --text-key)")
        if skips:
            say(f"WARNING: {len(skips)} corpus record(s) skipped, first at {skips[0].where()}: {skips[0].reason}")
        value = bits_per_byte(backend, documents, opts.stride, opts.max_length, stream, len(skips))
        name = Path(opts.corpus[0]).stem.split(".")[0] if len(opts.corpus) == 1 else "corpus"
        bpb[name] = value.as_dict()
        say(f"bits per byte of {name}: {value.bits_per_byte:.4f} ({value.tokens} tokens, {value.bytes} bytes)")
    if "gen" in opts.tasks:
        name, summary = _generation(backend, opts)
        bpb_or_gen = {f"gen_{name}": summary}
        say(f"generation {name}: {summary['n']} answers in {summary['answers_file']}; judge: {summary['judge']}")
    else:
        bpb_or_gen = {}
    if "math" in opts.tasks:
        name, summary = _math(backend, opts)
        bpb_or_gen[f"math_{name}"] = summary
        say(f"math {name}: accuracy {summary['accuracy']:.4f} ({summary['correct']}/{summary['n']}); answers in {summary['answers_file']}")
    config = dict(model=str(opts.model), backend=backend.name, tasks=opts.tasks, shots=opts.shots, mode=opts.mode,
                  limit=opts.limit, dtype=opts.dtype, batch_size=opts.batch_size, max_length=backend.max_length,
                  stride=opts.stride, questions_per_s=throughput, seconds=round(time.perf_counter() - started, 2))
    results = build_results(scores, bpb, config, samples if opts.log_samples else None)
    results["results"].update(bpb_or_gen)
    return results


def _generation(backend, opts: EvalOptions) -> tuple[str, dict]:
    from megactllm.eval.generation import OpenAIJudge, read_open_questions, run_generation_task

    questions = read_open_questions(opts.questions_file)
    name = Path(opts.questions_file).stem
    out_dir = Path(opts.output).parent if opts.output else Path(".")
    judge = None
    if opts.judge_url:
        judge = OpenAIJudge(opts.judge_url, opts.judge_model, api_key=os.environ.get("MEGACTLLM_JUDGE_API_KEY"))
    summary = run_generation_task(backend, questions, out_dir / f"{name}_answers.jsonl", judge, opts.max_new_tokens)
    return name, summary


def _math(backend, opts: EvalOptions) -> tuple[str, dict]:
    from megactllm.eval.math_task import read_math_problems, run_math_task

    problems = read_math_problems(opts.math_file, opts.limit)
    name = Path(opts.math_file).stem
    out_dir = Path(opts.output).parent if opts.output else Path(".")
    return name, run_math_task(backend, problems, out_dir / f"math_{name}_answers.jsonl", opts.max_new_tokens)


def evaluate(opts: EvalOptions, stream=STDERR) -> dict:
    stream = sys.stderr if stream is STDERR else stream
    from megactllm.eval.results import markdown_table, write_results

    check_options(opts)  # a mistake in the options is named before the model loads
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


def evaluate_all_checkpoints(opts: EvalOptions, stream=STDERR) -> list[dict]:
    """Every iter_* checkpoint of the run directory opts.model, scored as in-loop evaluation does
    (same records), written to opts.output or RUN/checkpoint_evals.jsonl; the metrics plot shows
    them beside the in-loop curve."""
    stream = sys.stderr if stream is STDERR else stream
    from megactllm.config import EvalConfig
    from megactllm.eval.inloop import evaluate_checkpoints
    from megactllm.parallel import destroy_parallel
    from megactllm.checkpoint import read_metadata

    run = Path(opts.model)
    first = sorted(run.glob("iter_*"))
    if not first:
        raise EvalInputNotFoundError(f"{run} holds no iter_* checkpoints")
    tasks = [t for t in opts.tasks if t not in ("bpb", "gen", "math")]
    if len(tasks) != len(opts.tasks):
        raise EvalSetupError("--all-checkpoints scores benchmark tasks; run bpb, gen or math per checkpoint with --model ITER_DIR")
    check_options(opts)
    cfg = EvalConfig(interval=1, tasks=tasks, data_dir=opts.data_dir, subjects=list(opts.subjects), shots=opts.shots,
                     max_questions=opts.limit, batch_size=opts.batch_size, max_length=opts.max_length)
    parallel = _init_parallel_for(opts, read_metadata(first[0]).model_config.num_layers)
    try:
        return evaluate_checkpoints(run, cfg, parallel, out=opts.output, stream=stream)
    finally:
        destroy_parallel()
