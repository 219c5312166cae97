"""Evaluation the way CT-LLM was judged: C-Eval / CMMLU / MMLU multiple choice, bits per byte,
on a Hugging Face directory or a megactllm checkpoint at its TP/PP/DP layout, and in the loop.

    from megactllm.eval import load_benchmark, evaluate_subjects
    from megactllm.eval.backends.hf import HFBackend
    subjects = load_benchmark("cmmlu", "../shared/data/eval/cmmlu", ["agronomy"], shots=5)
    result = evaluate_subjects(HFBackend("hf/ctllm-2b"), subjects, shots=5)

Prompts and scoring equal lm-eval 0.4's cmmlu_* / ceval-valid_* / mmlu_* tasks (prompts.py).
"""
from megactllm.eval.errors import EvalDataError, EvalInputNotFoundError, EvalSetupError
from megactllm.eval.runner import MCResult, evaluate_subjects
from megactllm.eval.tasks import BENCHMARKS, Question, Subject, load_benchmark

__all__ = ["BENCHMARKS", "EvalDataError", "EvalInputNotFoundError", "EvalSetupError", "MCResult", "Question", "Subject", "evaluate_subjects", "load_benchmark"]
