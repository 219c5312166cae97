"""Tasks as data: benchmark subjects read from local files (see multiple_choice.py)."""
from megactllm.eval.tasks.multiple_choice import BENCHMARKS, Question, Subject, load_benchmark

__all__ = ["BENCHMARKS", "Question", "Subject", "load_benchmark"]
