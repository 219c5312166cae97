"""Reading instruction and preference records (json / jsonl) into chat-template conversations.

Accepted SFT record shapes (one object per record):
- alpaca:        {"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}
- conversations: {"conversations": [{"from"|"role": ..., "value"|"content": ...}, ...], "system"?}
- messages:      {"messages": [{"role", "content"}, ...]}
Role names are normalised (human -> user, gpt/bot/model -> assistant, ...).

Accepted DPO record shapes:
- {"conversations"|"messages": prompt turns, "chosen": turn|str, "rejected": turn|str}
- {"prompt": str, "chosen": str, "rejected": str, "system"?: str}

A bad record raises RecordError inside the parser; readers catch it, count it by reason and keep
`file:record` locations, so one broken line never stops a long preprocessing run.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from megactllm.common.jsonl import jsonl_lines
from megactllm.errors import UserError

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
}


class RecordError(UserError, ValueError):
    """One record that cannot be used; the message says why."""


@dataclass
class BadRecordLog:
    """Counts of unusable records by reason, with the first few `file:record` locations of each."""

    keep_examples: int = 5
    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def add(self, location: str, reason: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < self.keep_examples:
            self.examples[reason].append(location)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.examples}

    def lines(self) -> list[str]:
        return [f"  {n} x {reason}  (e.g. {', '.join(self.examples[reason])})" for reason, n in self.counts.most_common()]


def iter_json_records(path: str) -> Iterator[tuple[str, Any]]:
    """(location, record) for each record of a .json array or a .jsonl file.

    Location is `path:N` (1-based record number; for jsonl N is the line number). A line that is
    not valid JSON comes back as a RecordError instance in place of the record.
    """
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        try:
            with open(path, encoding="utf-8") as f:
                records = json.load(f)
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}: not a valid JSON array ({e}); use one JSON object per line (.jsonl)") from None
        for i, record in enumerate(records, start=1):
            yield f"{path}:{i}", record
        return
    for line_no, line in jsonl_lines(path):
        try:
            yield f"{path}:{line_no}", json.loads(line)
        except json.JSONDecodeError as e:
            yield f"{path}:{line_no}", RecordError(f"invalid JSON ({e.msg})")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} is not a string")
    return value


def _turn(turn: Any) -> dict:
    if not isinstance(turn, dict):
        raise RecordError("a turn is not an object")
    role = turn.get("role", turn.get("from"))
    content = turn.get("content", turn.get("value"))
    if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
        raise RecordError(f"unknown role {role!r}")
    return {"role": ROLE_ALIASES[role.lower()], "content": _text(content, "turn content")}


def _with_system(system: Any, turns: list[dict]) -> list[dict]:
    if system and not (turns and turns[0]["role"] == "system"):
        return [{"role": "system", "content": _text(system, "system")}] + turns
    return turns


def _check_alternation(turns: list[dict]) -> None:
    body = turns[1:] if turns and turns[0]["role"] == "system" else turns
    for i, t in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if t["role"] != expected:
            raise RecordError(f"turns must alternate user/assistant after an optional system turn (turn {i} is {t['role']})")


def _turn_list(record: dict) -> list[dict] | None:
    for key in ("conversations", "messages"):
        if key in record:
            turns = record[key]
            if not isinstance(turns, list):
                raise RecordError(f"{key!r} is not a list")
            return [_turn(t) for t in turns]
    return None


def _has_text(turns: list[dict], role: str) -> bool:
    return any(t["role"] == role and t["content"].strip() for t in turns)


def sft_conversation(record: Any) -> list[dict]:
    """The chat turns of one SFT record, ending with an assistant turn."""
    if not isinstance(record, dict):
        raise RecordError("record is not an object")
    turns = _turn_list(record)
    if turns is None:
        if "instruction" not in record or "output" not in record:
            raise RecordError("no 'conversations'/'messages' and no alpaca 'instruction'+'output'")
        turns = []
        for pair in record.get("history") or []:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise RecordError("'history' entries must be [user, assistant] pairs")
            turns += [{"role": "user", "content": _text(pair[0], "history")},
                      {"role": "assistant", "content": _text(pair[1], "history")}]
        instruction = _text(record["instruction"], "instruction")
        extra = record.get("input") or ""
        user = f"{instruction}\n{_text(extra, 'input')}" if extra else instruction
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record["output"], "output")}]
    turns = _with_system(record.get("system"), turns)
    _check_alternation(turns)
    if not turns or turns[-1]["role"] != "assistant":
        raise RecordError("conversation does not end with an assistant turn")
    if not _has_text(turns, "assistant"):
        raise RecordError("empty assistant response")
    if not _has_text(turns, "user"):
        raise RecordError("empty user prompt")
    return turns


def _response(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        turn = _turn(value)
        if turn["role"] != "assistant":
            raise RecordError(f"{what} has role {turn['role']!r}, expected an assistant turn")
        return turn["content"]
    raise RecordError(f"{what} is neither a string nor a turn")


def dpo_pair(record: Any) -> tuple[list[dict], str, str]:
    """(prompt turns ending with a user turn, chosen response, rejected response) of one DPO record."""
    if not isinstance(record, dict):
        raise RecordError("record is not an object")
    if "chosen" not in record or "rejected" not in record:
        raise RecordError("missing 'chosen' or 'rejected'")
    prompt = _turn_list(record)
    if prompt is None:
        if "prompt" not in record:
            raise RecordError("no 'conversations'/'messages'/'prompt'")
        prompt = [{"role": "user", "content": _text(record["prompt"], "prompt")}]
    prompt = _with_system(record.get("system"), prompt)
    _check_alternation(prompt)
    if not prompt or prompt[-1]["role"] != "user":
        raise RecordError("prompt does not end with a user turn")
    chosen, rejected = _response(record["chosen"], "chosen"), _response(record["rejected"], "rejected")
    if not chosen.strip() or not rejected.strip():
        raise RecordError("empty chosen or rejected response")
    if chosen == rejected:
        raise RecordError("chosen and rejected responses are identical")
    return prompt, chosen, rejected


def input_files(paths: list[str]) -> list[str]:
    """Files named directly, plus the .json/.jsonl files of named directories (sorted)."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith((".json", ".jsonl")))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist")
    if not files:
        raise FileNotFoundError(f"no .json/.jsonl files in {paths}")
    return files


def iter_input_records(paths) -> Iterator[tuple[str, Any]]:
    """(file:line, record) of every jsonl file the paths name (files, globs, directories), in order."""
    for path in input_files(list(paths)):
        yield from iter_json_records(path)
