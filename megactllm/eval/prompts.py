"""Prompts equal to lm-eval 0.4's `cmmlu_*`, `ceval-valid_*` and `mmlu_*` tasks.

lm-eval builds: description + k x (question text + " " + answer letter + "\\n\\n") + question text,
taking the first k dev questions (sampler first_n), and scores each choice as the continuation
" " + letter. The question text is `question.strip()\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\n答案：`
("Answer:" for MMLU).
"""
from __future__ import annotations

from megactllm.eval.tasks import Question, Subject

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
LETTERS = ("A", "B", "C", "D")

DESCRIPTIONS = {
    "cmmlu": "以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n",
    "ceval": "以下是中国关于{name}的单项选择题，请选出其中的正确答案。\n\n",
    "mmlu": "The following are multiple choice questions (with answers) about {name}.\n\n",
    "jsonl": "",
}
ANSWER_CUE = {"mmlu": "Answer:"}


def description(subject: Subject) -> str:
    return DESCRIPTIONS[subject.benchmark].format(name=subject.display_name)


def question_text(subject: Subject, q: Question) -> str:
    if subject.benchmark == "jsonl":  # choices are scored as texts, not shown as lettered options
        return f"{q.question.strip()}\n答案："
    options = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, q.choices))
    return f"{q.question.strip()}{options}\n{ANSWER_CUE.get(subject.benchmark, '答案：')}"


def choice_texts(subject: Subject, q: Question) -> list[str]:
    """What each choice's continuation says (without the delimiter): letters, or jsonl's texts."""
    return list(q.choices) if subject.benchmark == "jsonl" else list(LETTERS[: len(q.choices)])


def context(subject: Subject, q: Question, shots: int) -> str:
    """description + the first `shots` dev questions with their answers + this question."""
    parts = [description(subject)]
    for example in subject.dev[:shots]:
        answer = choice_texts(subject, example)[example.answer]
        parts.append(question_text(subject, example) + TARGET_DELIMITER + answer + FEWSHOT_DELIMITER)
    parts.append(question_text(subject, q))
    return "".join(parts)
