#!/usr/bin/env python
"""Questions/s of megactllm's HF backend against lm-eval 0.4's HFLM, same model, same CMMLU
subjects and questions, in one run, 0-shot and 5-shot; the parallel backend's figure beside them.

    python bench/eval.py                                  # random LLaMA (4 layers, hidden 256, MAP-NEO vocab)
    python bench/eval.py --subjects agronomy,astronomy --questions 24 --repeats 3
    python bench/eval.py --model hf/ctllm-2b --dtype bf16 # a real model on a GPU

Runs are interleaved (ours, lm-eval, ours, lm-eval, ...) and each figure is the median over
--repeats; the ratio compares figures measured in the same run (target: >= 3x at 5-shot). Both
sides use the same batch size; lm-eval's datasets are loaded once before timing. Our speed comes
from running each question's prefix once for all choices with the output layer only at the
scored position; lm-eval computes full-vocabulary log-softmax over every prompt position.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's progress bars would bury the figures
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEGACTLLM_SHARED_DATA", REPO.parent / "shared" / "data"))


def random_llama(out: Path, layers: int, hidden: int) -> Path:
    """A random LLaMA with the real MAP-NEO SentencePiece tokenizer (64,000 pieces)."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHARED / "tokenizers" / "map_neo_sp.model", out / "tokenizer.model")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64000, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=2048)
    LlamaForCausalLM(config).save_pretrained(out)
    LlamaTokenizer.from_pretrained(str(out)).save_pretrained(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF directory (default: a random 4-layer LLaMA, hidden 256)")
    p.add_argument("--data-dir", default=str(SHARED / "eval" / "cmmlu"))
    p.add_argument("--subjects", default="agronomy,astronomy")
    p.add_argument("--questions", type=int, default=16, help="per subject")
    p.add_argument("--shots", default="0,5")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--no-parallel", action="store_true", help="skip the parallel backend's figure")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from megactllm.eval import evaluate_subjects, load_benchmark
    from megactllm.eval.backends.hf import HFBackend
    from megactllm.eval.lm_eval_compat import lm_eval_task_yaml

    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    model_dir = Path(a.model) if a.model else random_llama(work / "hf", a.layers, a.hidden)
    subjects = a.subjects.split(",")
    tasks_dir = work / "tasks"
    tasks_dir.mkdir()
    lm_tasks = [lm_eval_task_yaml(tasks_dir, "cmmlu", Path(a.data_dir), s) for s in subjects]
    manager = TaskManager(include_path=str(tasks_dir))
    ours = HFBackend(model_dir, dtype=a.dtype, batch_size=a.batch_size)
    theirs = HFLM(pretrained=str(model_dir), batch_size=a.batch_size, dtype={"fp32": "float32", "bf16": "bfloat16"}[a.dtype],
                  device="cuda" if torch.cuda.is_available() else "cpu")
    n = a.questions * len(subjects)
    print(f"model {model_dir} | {len(subjects)} CMMLU subjects x {a.questions} questions | batch {a.batch_size} | "
          f"{torch.get_num_threads()} threads", flush=True)

    def run_ours(shots):
        loaded = load_benchmark("cmmlu", a.data_dir, subjects, shots=shots)
        start = time.perf_counter()
        evaluate_subjects(ours, loaded, shots=shots, limit=a.questions, progress_stream=None)
        return n / (time.perf_counter() - start)

    def run_lm_eval(shots):
        start = time.perf_counter()
        lm_eval.simple_evaluate(model=theirs, tasks=lm_tasks, num_fewshot=shots, limit=a.questions,
                                task_manager=manager, verbosity="ERROR")
        return n / (time.perf_counter() - start)

    import logging

    logging.disable(logging.WARNING)
    lm_eval.simple_evaluate(model=theirs, tasks=lm_tasks, num_fewshot=0, limit=1, task_manager=manager)  # load datasets once
    figures = {}
    for shots in [int(s) for s in a.shots.split(",")]:
        mine, ref = [], []
        for _ in range(a.repeats):
            mine.append(run_ours(shots))
            ref.append(run_lm_eval(shots))
        figures[shots] = (statistics.median(mine), statistics.median(ref))
        print(f"{shots}-shot: megactllm HF backend {figures[shots][0]:8.2f} questions/s | lm-eval HFLM {figures[shots][1]:8.2f} "
              f"questions/s | ratio {figures[shots][0] / figures[shots][1]:.2f}x  (medians of {a.repeats})", flush=True)
    if not a.no_parallel and not a.model:
        for shots in figures:
            print(f"{shots}-shot: megactllm parallel backend (TP1, one process) {parallel_figure(model_dir, work, a, shots):8.2f} questions/s",
                  flush=True)
    shutil.rmtree(work, ignore_errors=True)


def parallel_figure(model_dir: Path, work: Path, a, shots: int) -> float:
    """The same questions through the parallel model (the HF model imported as a megactllm checkpoint)."""
    from megactllm.config import ParallelConfig
    from megactllm.convert import import_from_hf
    from megactllm.eval import evaluate_subjects, load_benchmark
    from megactllm.eval.backends.parallel import ParallelBackend
    from megactllm.parallel import initialize_parallel
    from megactllm.testing.distributed import free_port

    checkpoint = work / "megactllm"
    if not checkpoint.exists():
        import_from_hf(model_dir, checkpoint, target_tp=1, progress_stream=None)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        initialize_parallel(ParallelConfig())
    if not hasattr(parallel_figure, "backend"):
        from megactllm.checkpoint import resolve_checkpoint_dir

        parallel_figure.backend = ParallelBackend.from_checkpoint(resolve_checkpoint_dir(checkpoint), ParallelConfig(),
                                                                  batch_size=a.batch_size)
    subjects = load_benchmark("cmmlu", a.data_dir, a.subjects.split(","), shots=shots)
    start = time.perf_counter()
    evaluate_subjects(parallel_figure.backend, subjects, shots=shots, limit=a.questions, progress_stream=None)
    return a.questions * len(subjects) / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
