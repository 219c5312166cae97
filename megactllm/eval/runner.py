"""Scoring multiple-choice subjects through any backend, in one of three modes (see scoring.py).

All questions of all subjects go to the backend as one list of requests, so it can sort and batch
them across subjects; every choice of one question shares the question's prefix.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Optional, TextIO

from megactllm.eval import prompts
from megactllm.eval.backends.base import Backend
from megactllm.eval.errors import EvalSetupError
from megactllm.eval.progress import Progress
from megactllm.eval.requests import TokenRequest, encode_pair
from megactllm.eval.scoring import MODES, argmax, SubjectScore, choice_metrics, extract_letter, subject_score
from megactllm.eval.tasks import Question, Subject
from megactllm.common.progress import STDERR


@dataclass
class MCResult:
    scores: list[SubjectScore]
    samples: dict = field(default_factory=dict)   # task -> per-question records (with --log-samples)
    questions: int = 0
    seconds: float = 0.0

    @property
    def questions_per_s(self) -> float:
        return self.questions / max(self.seconds, 1e-9)


class _Encoder:
    """backend.encode with a memo: every choice of a question re-encodes the same long context."""

    def __init__(self, backend: Backend):
        self.backend, self.memo = backend, {}

    def __call__(self, text: str) -> list[int]:
        ids = self.memo.get(text)
        if ids is None:
            ids = self.memo[text] = self.backend.encode(text)
        return ids


def build_requests(encode, subject: Subject, q: Question, shots: int, mode: str) -> list[TokenRequest]:
    context = prompts.context(subject, q, shots)
    if mode == "loglikelihood":
        return [encode_pair(encode, context, prompts.TARGET_DELIMITER + c) for c in prompts.choice_texts(subject, q)]
    # letter mode: the next token after the prompt, one id per letter (the last id of encoding the
    # letter alone, as CMMLU's harness takes it)
    ctx = tuple(encode(context))
    return [TokenRequest(ctx, (encode(letter)[-1],)) for letter in prompts.choice_texts(subject, q)]


def evaluate_subjects(backend: Backend, subjects: list[Subject], shots: int = 0, mode: str = "loglikelihood",
                      limit: Optional[int] = None, log_samples: bool = False,
                      progress_stream: Optional[TextIO] = STDERR) -> MCResult:
    if mode not in MODES:
        raise EvalSetupError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    if mode == "letter" and any(s.benchmark == "jsonl" for s in subjects):
        raise EvalSetupError("letter mode needs lettered options; jsonl tasks score choice texts (use loglikelihood)")
    encode = _Encoder(backend)
    start = time.perf_counter()
    work = [(s, q) for s in subjects for q in (s.questions[:limit] if limit else s.questions)]
    stream = progress_stream if backend.is_reporting_rank else None
    progress = Progress(len(work), "questions", f"{mode} {len(subjects)} subject(s), {shots}-shot", stream)
    if mode == "generate":
        answers = _generate_answers(backend, encode, work, shots, progress)
    else:
        requests, spans = [], []
        for s, q in work:
            rs = build_requests(encode, s, q, shots, mode)
            spans.append((len(requests), len(rs)))
            requests.extend(rs)
        per_choice = len(requests) / max(len(work), 1)
        lls = backend.loglikelihood(requests, progress=lambda n: progress(round(n / per_choice)))
        answers = [[ll for ll, _ in lls[a: a + n]] for a, n in spans]

    per_subject: dict[str, list] = {}
    samples: dict[str, list] = {}
    for (s, q), answer in zip(work, answers):
        if mode == "loglikelihood":
            record = choice_metrics(answer, prompts.choice_texts(s, q), q.answer)
        elif mode == "letter":
            record = {"acc_letter": float(argmax(answer) == q.answer)}
        else:
            picked = extract_letter(answer)
            record = {"acc_generate": float(picked == q.answer), "unparsed": int(picked is None)}
        per_subject.setdefault(s.task_name, []).append(record)
        if log_samples:
            samples.setdefault(s.task_name, []).append({"source": q.source, "target": q.answer, "response": answer, **record})
    scores = [subject_score(s.task_name, s.benchmark, s.category, per_subject[s.task_name]) for s in subjects
              if s.task_name in per_subject]
    return MCResult(scores, samples, len(work), time.perf_counter() - start)


def _generate_answers(backend: Backend, encode, work, shots: int, progress) -> list[str]:
    contexts = [encode(prompts.context(s, q, shots)) for s, q in work]
    out = []
    step = max(backend.batch_size, 1) * 4
    for a in range(0, len(contexts), step):
        out.extend(backend.greedy_generate(contexts[a: a + step], max_new_tokens=8, stop=["\n"]))
        progress(len(contexts[a: a + step]))
    return out
