"""Multiple-choice benchmarks read from local files: CMMLU, C-Eval, MMLU layouts and a generic jsonl.

    subjects = load_benchmark("cmmlu", "../shared/data/eval/cmmlu", subjects=["agronomy"])
    subjects[0].task_name == "cmmlu_agronomy"; subjects[0].questions[0].answer == 2

Subjects are whatever files exist in the evaluation split. Their display names and categories come
from the tables shipped in the package (equal to lm-eval's), overridden by a `mapping.json` beside
the splits where there is one (see subject_names.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from megactllm.common.jsonl import jsonl_lines
from megactllm.eval.errors import EvalDataError, EvalSetupError, utf8_file
from megactllm.eval.tasks.csv_files import LETTERS, answer_index, column_index, read_rows
from megactllm.eval.tasks.subject_names import read_mapping, subject_info


@dataclass
class Question:
    question: str
    choices: list[str]          # option texts shown in the prompt (A-D), or continuations for jsonl
    answer: int                 # index into choices
    source: str = ""            # "file:row", for --log-samples and error messages


@dataclass
class Subject:
    benchmark: str              # cmmlu, ceval, mmlu, jsonl
    name: str                   # file stem, e.g. agronomy
    display_name: str           # 农学 / anatomy: what the description line says
    category: str
    questions: list[Question]
    dev: list[Question] = field(default_factory=list)

    @property
    def task_name(self) -> str:
        """lm-eval 0.4's task name, the key in results.json."""
        prefix = {"cmmlu": "cmmlu_", "ceval": "ceval-valid_", "mmlu": "mmlu_"}.get(self.benchmark, "")
        return prefix + self.name


@dataclass(frozen=True)
class _Layout:
    eval_split: str
    file_suffix: str                     # "" (agronomy.csv) or "_{split}" (accountant_val.csv)
    columns: Optional[tuple[str, ...]]   # question, A, B, C, D, answer column names; None: headerless


LAYOUTS = {
    "cmmlu": _Layout("test", "", ("Question", "A", "B", "C", "D", "Answer")),
    "ceval": _Layout("val", "_{split}", ("question", "A", "B", "C", "D", "answer")),
    "mmlu": _Layout("test", "_{split}", None),
}
BENCHMARKS = tuple(LAYOUTS) + ("jsonl",)


def _csv_questions(path: Path, layout: _Layout) -> list[Question]:
    header, rows = read_rows(path, header=layout.columns is not None)
    if layout.columns is None:
        positions = dict(zip(("question", "A", "B", "C", "D", "answer"), range(6)))
        width = 6
    else:
        positions = column_index(path, header, layout.columns)
        positions = dict(zip(("question", "A", "B", "C", "D", "answer"), (positions[c] for c in layout.columns)))
        width = len(header)
    out = []
    for number, fields in rows:
        if len(fields) < max(positions.values()) + 1 or (layout.columns is None and len(fields) != width):
            raise EvalDataError(path, f"expected {width} fields, found {len(fields)}", row=number)
        out.append(Question(
            question=fields[positions["question"]],
            choices=[fields[positions[letter]] for letter in LETTERS],
            answer=answer_index(path, number, fields[positions["answer"]]),
            source=f"{path.name}:{number}",
        ))
    return out


def _jsonl_questions(path: Path) -> list[Question]:
    out = []
    with utf8_file(path):
        lines = list(jsonl_lines(path, encoding="utf-8-sig"))
    for number, line in lines:
        try:
            record = json.loads(line)
            question, choices, answer = record["question"], list(record["choices"]), record["answer"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise EvalDataError(path, f"expected {{question, choices, answer}} JSON ({type(e).__name__}: {e})", row=number) from None
        if isinstance(answer, str):
            answer = answer_index(path, number, answer)
        if not isinstance(answer, int) or not 0 <= answer < len(choices) or len(choices) < 2:
            raise EvalDataError(path, f"answer {answer!r} does not index the {len(choices)} choices", row=number)
        out.append(Question(str(question), [str(c) for c in choices], answer, f"{path.name}:{number}"))
    return out


def _subject_files(directory: Path, suffix: str, ext: str) -> dict[str, Path]:
    if not directory.is_dir():
        raise EvalDataError(directory, "directory does not exist")
    tail = suffix + ext
    files = {p.name[: -len(tail)]: p for p in sorted(directory.glob(f"*{tail}")) if p.is_file()}
    if not files:
        raise EvalDataError(directory, f"no subject files (*{tail}) found")
    return files


def load_benchmark(benchmark: str, data_dir, subjects: Optional[list[str]] = None, shots: int = 0,
                   split: Optional[str] = None) -> list[Subject]:
    """The subjects of `benchmark` under data_dir (all, or those named), each with its dev questions
    when shots > 0."""
    if benchmark not in BENCHMARKS:
        raise EvalSetupError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    if not 0 <= shots <= 5:
        raise EvalSetupError(f"shots must be 0-5 (the dev split holds 5 questions per subject), got {shots}")
    root = Path(data_dir)
    if benchmark == "jsonl":
        return _load_jsonl(root, subjects, shots)
    layout = LAYOUTS[benchmark]
    split = split or layout.eval_split
    files = _subject_files(root / split, layout.file_suffix.format(split=split), ".csv")
    names = _select(files, subjects, root / split)
    mapping = read_mapping(root)
    out = []
    for name in names:
        questions = _csv_questions(files[name], layout)
        if not questions:
            raise EvalDataError(files[name], "holds no questions")
        dev = []
        if shots:
            dev_path = root / "dev" / f"{name}{layout.file_suffix.format(split='dev')}.csv"
            if not dev_path.is_file():
                raise EvalDataError(dev_path, f"{shots}-shot needs the subject's dev file, which does not exist")
            dev = _csv_questions(dev_path, layout)
            if len(dev) < shots:
                raise EvalDataError(dev_path, f"{shots}-shot needs {shots} dev questions, found {len(dev)}")
        display, category = subject_info(benchmark, name, mapping, root, files[name])
        out.append(Subject(benchmark, name, display, category, questions, dev))
    return out


def _select(files: dict, subjects: Optional[list[str]], where: Path) -> list[str]:
    if not subjects:
        return list(files)
    missing = [s for s in subjects if s not in files]
    if missing:
        raise EvalDataError(where, f"no file for subject(s) {missing}; present: {', '.join(files)}")
    return list(subjects)


def _load_jsonl(root: Path, subjects, shots: int) -> list[Subject]:
    """Generic jsonl: ROOT/<subject>.jsonl of {question, choices, answer}; few-shot from ROOT/dev/<subject>.jsonl."""
    files = _subject_files(root, "", ".jsonl")
    out = []
    for name in _select(files, subjects, root):
        questions = _jsonl_questions(files[name])
        if not questions:
            raise EvalDataError(files[name], "holds no questions")
        dev_path = root / "dev" / f"{name}.jsonl"
        dev = _jsonl_questions(dev_path)[:shots] if shots and dev_path.is_file() else []
        if len(dev) < shots:
            raise EvalDataError(root / "dev" / f"{name}.jsonl", f"{shots}-shot needs {shots} dev questions, found {len(dev)}")
        out.append(Subject("jsonl", name, name, "Other", questions, dev))
    return out
