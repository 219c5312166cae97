"""Batch generation: a jsonl of prompts in, a jsonl of completions out (one line per record, in order).

Each input record is {"prompt": "..."} (plain text continuation) or {"messages": [...]} (chat,
rendered with the model's template); other fields (an "id"...) are copied to the output, which
adds "completion", "finish_reason", "prompt_tokens" and "completion_tokens". Output lines are
flushed as they are made, so a stopped run keeps what it finished; a bad record stops the run
with an error naming the file and line.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, TextIO

from megactllm.errors import UserError
from megactllm.serve.engine import Engine, EngineError, SamplingParams
from megactllm.common.progress import STDERR


class GenerateError(UserError, ValueError):
    """A record of the input file that cannot be generated for (named by file and line)."""


def _prompt_ids(engine: Engine, record, where: str) -> list[int]:
    if not isinstance(record, dict):
        raise GenerateError(f"{where}: a record must be a JSON object")
    if isinstance(record.get("messages"), list):
        try:
            return engine.chat_tokens(record["messages"])
        except (EngineError, ValueError, TypeError, KeyError) as e:
            raise GenerateError(f"{where}: messages cannot be rendered: {e}") from None
    if isinstance(record.get("prompt"), str):
        return engine.tokenize(record["prompt"])
    raise GenerateError(f"{where}: needs a string 'prompt' or a list 'messages'")


def generate_jsonl(engine: Engine, in_path: str | Path, out_path: str | Path, params: SamplingParams,
                   progress: Optional[TextIO] = STDERR) -> int:
    """Complete every record of `in_path` into `out_path`; returns the number of records."""
    in_path = Path(in_path)
    count = 0
    with open(in_path, encoding="utf-8") as src, open(out_path, "w", encoding="utf-8") as out:
        for line_no, line in enumerate(src, 1):
            if not line.strip():
                continue
            where = f"{in_path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise GenerateError(f"{where}: not valid JSON ({e})") from None
            ids = _prompt_ids(engine, record, where)
            if len(ids) >= engine.info.context_length:
                raise GenerateError(f"{where}: the prompt is {len(ids)} tokens; the context is {engine.info.context_length}")
            result = engine.complete(ids, params)
            record.update(completion=result.text, finish_reason=result.finish_reason,
                          prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            count += 1
            if progress is not None:
                print(f"[generate] {count} done ({where})", file=sys.stderr if progress is STDERR else progress, flush=True)
    return count
