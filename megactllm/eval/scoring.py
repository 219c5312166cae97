"""From per-choice scores to acc / acc_norm, and from per-question results to subject, category,
micro and macro averages.

Three modes, each named in the results:
- "loglikelihood" (lm-eval's): each choice's continuation " A" scored by log-likelihood; acc is the
  argmax, acc_norm the argmax of log-likelihood per character of the choice text.
- "letter" (CMMLU's and C-Eval's own harnesses): the next-token probability of each letter id
  after the prompt; metric `acc_letter`.
- "generate": greedy answer, the first A-D letter in it; metric `acc_generate`, with the count of
  answers that held no letter (`unparsed`).
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence

MODES = ("loglikelihood", "letter", "generate")
MODE_METRICS = {"loglikelihood": ("acc", "acc_norm"), "letter": ("acc_letter",), "generate": ("acc_generate",)}


def argmax(values: Sequence[float]) -> int:
    # First maximum, as numpy.argmax (lm-eval's) breaks ties.
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def choice_metrics(lls: Sequence[float], choice_texts: Sequence[str], answer: int) -> dict:
    """lm-eval's multiple_choice acc and acc_norm (normalised by the choice's length in characters)."""
    norm = [ll / max(len(text), 1) for ll, text in zip(lls, choice_texts)]
    return {"acc": float(argmax(lls) == answer), "acc_norm": float(argmax(norm) == answer)}


_LETTER = re.compile(r"[A-D]")


def extract_letter(text: str) -> Optional[int]:
    """Index of the first capital A-D in a generated answer, or None."""
    m = _LETTER.search(text)
    return "ABCD".index(m.group()) if m else None


@dataclass
class SubjectScore:
    task: str           # lm-eval task name, e.g. cmmlu_agronomy
    benchmark: str
    category: str
    metrics: dict       # metric -> mean over the subject's questions
    n: int
    unparsed: int = 0


def subject_score(task: str, benchmark: str, category: str, per_question: list[dict]) -> SubjectScore:
    names = per_question[0].keys() if per_question else ()
    metrics = {k: sum(q[k] for q in per_question) / len(per_question) for k in names if k != "unparsed"}
    unparsed = sum(int(q.get("unparsed", 0)) for q in per_question)
    return SubjectScore(task, benchmark, category, metrics, len(per_question), unparsed)


def aggregate(scores: list[SubjectScore]) -> dict:
    """Per benchmark and per benchmark category: micro (weighted by questions, lm-eval's group
    average) and macro (mean of subjects) of every metric. Keys: "cmmlu", "cmmlu/STEM", ..."""
    buckets: dict[str, list[SubjectScore]] = defaultdict(list)
    for s in scores:
        buckets[s.benchmark].append(s)
        buckets[f"{s.benchmark}/{s.category}"].append(s)
    out = {}
    for key in sorted(buckets):
        members = buckets[key]
        n = sum(s.n for s in members)
        entry = {"n": n, "subjects": len(members)}
        for metric in members[0].metrics:
            entry[f"{metric}_micro"] = sum(s.metrics[metric] * s.n for s in members) / n
            entry[f"{metric}_macro"] = sum(s.metrics[metric] for s in members) / len(members)
        out[key] = entry
    return out
