"""Generation tasks for chat models (CHC-Bench style): open questions answered through the model's
chat template, greedy, then rated 1-10 by a judge model behind any OpenAI-compatible endpoint.

Without a judge endpoint the answers are written out and the rating step is skipped, and the
results say so; no rating is ever made up. A judge reply without a [[rating]] is recorded as
unrated (counted in the results); an endpoint that fails (HTTP error, not JSON, no message) stops
the task with JudgeError naming the question.
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megactllm.common.jsonl import jsonl_lines, write_jsonl_atomic
from megactllm.errors import UserError
from megactllm.eval.errors import EvalDataError, utf8_file


@dataclass
class OpenQuestion:
    id: str
    question: str
    category: str = "general"
    reference: Optional[str] = None


def read_open_questions(path) -> list[OpenQuestion]:
    """jsonl of {"question": str, "id"?, "category"?, "reference"?}."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(path, "generation question file does not exist")
    out = []
    with utf8_file(path):
        for number, line in jsonl_lines(path, encoding="utf-8-sig"):
            try:
                r = json.loads(line)
                question = r["question"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise EvalDataError(path, f"expected a JSON object with a 'question' ({type(e).__name__}: {e})", row=number) from None
            if not isinstance(question, str) or not question.strip():
                raise EvalDataError(path, "'question' must be a non-empty string", row=number)
            out.append(OpenQuestion(str(r.get("id", number)), question, str(r.get("category", "general")), r.get("reference")))
    if not out:
        raise EvalDataError(path, "holds no questions")
    return out


JUDGE_PROMPT = (
    "You are grading an AI assistant's answer to a user's question. Judge helpfulness, correctness, "
    "relevance, depth and fluency{reference_note}. Give a short justification, then the rating on its own "
    "line as [[N]], N an integer from 1 (useless) to 10 (excellent).\n\n[Question]\n{question}\n\n"
    "{reference_block}[Answer]\n{answer}\n"
)
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


class JudgeError(UserError, RuntimeError):
    pass


class OpenAIJudge:
    """A judge model behind an OpenAI-compatible /chat/completions endpoint (base URL ends in /v1)."""

    def __init__(self, base_url: str, model: str, api_key: Optional[str] = None, timeout: float = 120.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout = model, api_key, timeout

    def rate(self, q: OpenQuestion, answer: str) -> tuple[Optional[float], str]:
        prompt = JUDGE_PROMPT.format(
            question=q.question, answer=answer,
            reference_note=", using the reference answer as a guide" if q.reference else "",
            reference_block=f"[Reference answer]\n{q.reference}\n\n" if q.reference else "",
        )
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0})
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body.encode("utf-8"), headers=headers, method="POST")
        where = f"judge {self.url}, question {q.id}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise JudgeError(f"{where}: HTTP {e.code}: {e.read()[:200]!r}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise JudgeError(f"{where}: cannot reach the endpoint ({e})") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise JudgeError(f"{where}: not an OpenAI chat completion: {raw[:200]!r}") from None
        m = _RATING.search(content or "")
        rating = float(m.group(1)) if m and 1 <= float(m.group(1)) <= 10 else None
        return rating, content


def run_generation_task(backend, questions: list[OpenQuestion], answers_path, judge: Optional[OpenAIJudge] = None,
                        max_new_tokens: int = 256, system: Optional[str] = None) -> dict:
    """Answer every question (greedy, through the chat template), rate when a judge is given,
    write the answers as jsonl (atomically); returns the summary for results.json."""
    prompts = []
    for q in questions:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q.question}]
        prompts.append(backend.chat_prompt(messages))
    answers = backend.greedy_generate(prompts, max_new_tokens, stop=backend.chat_stop_strings())
    records = []
    for q, answer in zip(questions, answers):
        record = {"id": q.id, "category": q.category, "question": q.question, "answer": answer.strip(), "rating": None}
        if judge is not None:
            record["rating"], record["judge_output"] = judge.rate(q, record["answer"])
        records.append(record)
    if backend.is_reporting_rank:
        write_jsonl_atomic(Path(answers_path), records)
    rated = [r for r in records if r["rating"] is not None]
    summary = {"n": len(records), "answers_file": str(answers_path)}
    if judge is None:
        summary.update(judge="skipped: no judge endpoint given; answers written, not rated", mean_rating=None)
        return summary
    by_category: dict = {}
    for r in rated:
        by_category.setdefault(r["category"], []).append(r["rating"])
    summary.update(judge=judge.model, judged=len(rated), unrated=len(records) - len(rated),
                   mean_rating=sum(r["rating"] for r in rated) / len(rated) if rated else None,
                   mean_rating_by_category={k: sum(v) / len(v) for k, v in by_category.items()})
    return summary
