"""Benchmark accuracy during pretraining (as OLMo does), and the same curve from saved checkpoints.

Recipe section `eval` (megactllm.config.EvalConfig): every `eval.interval` iterations the loop
scores `eval.tasks` (subjects `eval.subjects`, at most `eval.max_questions` per subject,
`eval.shots`-shot) on the live model at its TP/PP/DP layout, and logs the accuracies to the
console, metrics.jsonl (kind "bench") and TensorBoard (bench/...).
`evaluate_checkpoints(run_dir, ...)` scores every saved iteration the same way afterwards and
writes RUN/checkpoint_evals.jsonl with records of the same shape.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from megactllm.config import ConfigError
from megactllm.eval.backends.parallel import ParallelBackend
from megactllm.eval.errors import EvalInputNotFoundError
from megactllm.eval.runner import evaluate_subjects
from megactllm.eval.scoring import aggregate
from megactllm.eval.tasks import load_benchmark

CHECKPOINT_EVALS_FILE = "checkpoint_evals.jsonl"


def load_eval_subjects(eval_cfg) -> list:
    from megactllm.eval.evaluate import benchmark_dir, subjects_for

    if not eval_cfg.data_dir:
        raise ConfigError("eval.data_dir must name the benchmark root (e.g. ../shared/data/eval)")
    subjects = []
    for task in eval_cfg.tasks:
        names = subjects_for(task, list(eval_cfg.subjects), len(eval_cfg.tasks))
        if names == []:
            continue
        subjects += load_benchmark(task, benchmark_dir(eval_cfg.data_dir, task, len(eval_cfg.tasks)), names,
                                   shots=eval_cfg.shots)
    return subjects


def benchmark_metrics(backend, subjects: list, eval_cfg) -> dict:
    """Flat {"cmmlu_agronomy/acc": .., "cmmlu/acc_micro": .., ...} for logging."""
    result = evaluate_subjects(backend, subjects, shots=eval_cfg.shots, limit=eval_cfg.max_questions,
                               progress_stream=None)
    flat = {f"{s.task}/{k}": v for s in result.scores for k, v in s.metrics.items()}
    for group, values in aggregate(result.scores).items():
        flat.update({f"{group}/{k}": v for k, v in values.items() if k.startswith("acc")})
    return flat


class InLoopEvaluator:
    """Built once by the Trainer (subjects read once); `run()` scores the live model chunks."""

    def __init__(self, eval_cfg, model_chunks: list, model_config, tokenizer):
        if tokenizer is None:  # neither data.tokenizer_model nor the checkpoint's copy
            raise ConfigError("in-loop evaluation (eval.interval) needs data.tokenizer_model to encode the prompts")
        self.cfg = eval_cfg
        self.subjects = load_eval_subjects(eval_cfg)
        self.backend = ParallelBackend(model_chunks, model_config, tokenizer, batch_size=eval_cfg.batch_size,
                                       max_length=eval_cfg.max_length)

    def due(self, iteration: int) -> bool:
        return bool(self.cfg.interval) and iteration % self.cfg.interval == 0

    def run(self) -> dict:
        return benchmark_metrics(self.backend, self.subjects, self.cfg)


def evaluate_checkpoints(run_dir, eval_cfg, parallel, out: Optional[str] = None, stream=None) -> list[dict]:
    """Score every iter_* checkpoint of run_dir (on the already initialised process groups) as the
    loop would have; returns the records and writes them (rank 0) as JSON lines."""
    import torch.distributed as dist

    from megactllm.checkpoint import METADATA_FILE, Checkpointer, iteration_dir, read_metadata

    run = Path(run_dir)
    iterations = [iteration_dir(run, it) for it in Checkpointer(run).list()]  # published ones only
    if not iterations:
        raise EvalInputNotFoundError(f"{run} holds no complete checkpoint (iter_*/{METADATA_FILE})")
    subjects = load_eval_subjects(eval_cfg)
    records = []
    for path in iterations:
        meta = read_metadata(path)
        backend = ParallelBackend.from_checkpoint(path, parallel, batch_size=eval_cfg.batch_size, max_length=eval_cfg.max_length)
        metrics = benchmark_metrics(backend, subjects, eval_cfg)
        record = {"kind": "bench", "iteration": meta.iteration,
                  "consumed_tokens": meta.train_state.get("consumed_tokens"), "metrics": metrics}
        records.append(record)
        if stream is not None and dist.get_rank() == 0:
            print(f"{path.name}: " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" in k and k.count("_") <= 2), file=stream, flush=True)
    if dist.get_rank() == 0:
        target = Path(out) if out else run / CHECKPOINT_EVALS_FILE
        target.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records
