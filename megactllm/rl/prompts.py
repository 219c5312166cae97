"""GRPO prompts: jsonl records {question, answer, ...} rendered through the model's chat template.

The question becomes one user turn followed by the open assistant header (the same ids the model
sees when it chats); every other field is a column handed to the reward functions (TRL's
convention), `answer` among them. A training order over the prompts is drawn once per epoch from
the run's seed, so a resumed run reads the same prompts at the same step.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from megactllm.common.jsonl import iter_jsonl
from megactllm.errors import UserError


class PromptFileError(UserError, ValueError):
    pass


@dataclass
class PromptSet:
    path: str
    questions: list[str]
    lines: list[int]  # 1-based line of each record
    token_ids: list[list[int]]
    columns: dict  # field -> list of values (the records' fields besides question)

    def __len__(self) -> int:
        return len(self.questions)

    def where(self, i: int) -> str:
        return f"record {i + 1} ({self.path}:{self.lines[i]})"

    def columns_of(self, indices: Sequence[int]) -> dict:
        return {k: [v[i] for i in indices] for k, v in self.columns.items()}


def load_prompts(path: str, tokenizer, need_answers: bool, max_prompt_tokens: int) -> PromptSet:
    """Read and render every prompt; one clear error for a record without a question (or answer), or too long."""
    from megactllm.tokenizer.chat_template import generation_prompt_tokens

    if not path:
        raise PromptFileError("train.stage=grpo needs data.prompts_path (jsonl records {question, answer})")
    if not Path(path).is_file():
        raise PromptFileError(f"data.prompts_path {path} does not exist")
    hint = " (GRPO prompts are jsonl records {\"question\": ..., \"answer\": ...})"
    questions, lines, token_ids, rows = [], [], [], []
    for line_no, record in iter_jsonl(path, PromptFileError, hint, objects_only=True):
        where = f"{path}:{line_no}"
        question = record.get("question", record.get("prompt"))
        if not isinstance(question, str) or not question.strip():
            raise PromptFileError(f"{where}: no `question` text{hint}")
        if need_answers and (record.get("answer") is None or str(record.get("answer")).strip() == ""):
            raise PromptFileError(f"{where}: no `answer`, which the math reward checks against{hint}")
        ids = generation_prompt_tokens(tokenizer, [{"role": "user", "content": question}])
        if len(ids) > max_prompt_tokens:
            raise PromptFileError(
                f"{where}: the prompt is {len(ids)} tokens with its chat template; with grpo.max_completion_tokens "
                f"it must fit model.seq_length ({max_prompt_tokens} tokens left for the prompt): shorten it or "
                "raise model.seq_length"
            )
        questions.append(question)
        lines.append(line_no)
        token_ids.append(ids)
        rows.append({k: v for k, v in record.items() if k not in ("question", "prompt")})
    if not questions:
        raise PromptFileError(f"{path} holds no prompts")
    keys = sorted({k for r in rows for k in r})
    columns = {k: [r.get(k) for r in rows] for k in keys}
    return PromptSet(str(path), questions, lines, token_ids, columns)


class PromptOrder:
    """A map-style dataset over training positions: item i is {"prompt": index, "position": i}, shuffled per epoch."""

    def __init__(self, n_prompts: int, length: int, seed: int):
        self.n = n_prompts
        self.length = length
        self.seed = seed
        self._epochs: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _epoch(self, e: int) -> np.ndarray:
        if e not in self._epochs:
            self._epochs[e] = np.random.default_rng((self.seed, e)).permutation(self.n)
        return self._epochs[e]

    def __getitem__(self, i: int) -> dict:
        # The position seeds the prompt's rollouts: the same samples on resume and at any layout.
        return {"prompt": np.array(self._epoch(i // self.n)[i % self.n], dtype=np.int64), "position": np.array(i, dtype=np.int64)}
