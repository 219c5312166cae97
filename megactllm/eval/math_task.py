"""The `math` task: {question, answer} problems answered greedily through the chat template and
checked by the same answer checker GRPO's math reward uses (megactllm.rl.answers), so a GRPO run
is judged before and after on the measure it trained on.

    megactllm evaluate --model hf/qwen2.5-7b-grpo --tasks math --math-file ../shared/data/rl/gsm8k_test.jsonl
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from megactllm.common.jsonl import iter_jsonl, write_jsonl_atomic
from megactllm.eval.errors import EvalDataError, utf8_file
from megactllm.rl.answers import answers_match, reference_value


class _Bad(ValueError):
    pass


def read_math_problems(path, limit: Optional[int] = None) -> list[dict]:
    """[{question, answer}] of a jsonl file; a record without either is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(path, "math problem file does not exist")
    out = []
    with utf8_file(path):
        try:
            for line, record in iter_jsonl(path, _Bad, objects_only=True):
                question, answer = record.get("question"), record.get("answer")
                if not isinstance(question, str) or not question.strip() or answer is None:
                    raise EvalDataError(path, "expected {\"question\": str, \"answer\": ...}", row=line)
                try:
                    reference_value(str(answer))
                except ValueError as e:
                    raise EvalDataError(path, str(e), row=line) from None
                out.append({"question": question, "answer": str(answer)})
                if limit and len(out) >= limit:
                    break
        except _Bad as e:
            raise EvalDataError(path, str(e)) from None
    if not out:
        raise EvalDataError(path, "holds no problems")
    return out


def run_math_task(backend, problems: list[dict], answers_path, max_new_tokens: int = 512) -> dict:
    """Greedy answers through the chat template, scored; writes the answers jsonl (reporting rank)."""
    prompts = [backend.chat_prompt([{"role": "user", "content": p["question"]}]) for p in problems]
    answers = backend.greedy_generate(prompts, max_new_tokens, stop=backend.chat_stop_strings())
    records = [dict(p, completion=a.strip(), correct=answers_match(a, p["answer"])) for p, a in zip(problems, answers)]
    if backend.is_reporting_rank:
        write_jsonl_atomic(Path(answers_path), records)
    correct = sum(r["correct"] for r in records)
    return {"n": len(records), "correct": correct, "accuracy": correct / len(records), "answers_file": str(answers_path)}
