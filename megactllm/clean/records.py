"""Reading shards record by record without ever crashing on bad input.

Formats and decompression are megactllm.common.corpus's (the tokenizer's reader); clean keeps
each record whole (id, url, every field) and turns a bad line into a BadRecord, not a skip count."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from megactllm.common import corpus
from megactllm.common.jsonl import iter_jsonl
from megactllm.common.optional import require

from .config import InputConfig

READ_CHUNK = 1 << 20


@dataclass
class Record:
    key: str  # the record's id field, else "<shard file>:<line>"
    where: str  # "<file>:<line>" (or ":row N" for parquet), for messages
    text: str
    url: str | None
    fields: dict[str, Any] = field(default_factory=dict)  # the whole input object, kept in the output
    nbytes: int = 0


@dataclass
class BadRecord:
    where: str
    reason: str  # bad_json | bad_utf8 | missing_text | giant_record
    detail: str
    raw: str  # the input as far as it can be shown (bad bytes backslash-escaped, giant ones cut)
    nbytes: int = 0


def detect_format(path: Path, fmt: str) -> str:
    """input.format, or the format megactllm.common.corpus reads from the name (txt for its text)."""
    if fmt != "auto":
        return fmt
    found = corpus.detect_format(str(path), hint="set input.format to jsonl, txt or parquet")
    return "txt" if found == "text" else found


def iter_lines(f: BinaryIO, limit: int) -> Iterator[tuple[bytes, int, bool]]:
    """(line without newline, its byte length, whether it exceeded limit). A giant line is
    skipped in chunks and only its first `limit` bytes are returned, so it never sits in memory."""
    buffered = io.BufferedReader(f, READ_CHUNK) if not isinstance(f, io.BufferedReader) else f
    while True:
        line = buffered.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line.rstrip(b"\r\n"), len(line), False
            continue
        total = len(line)
        while not line.endswith(b"\n"):
            line = buffered.readline(READ_CHUNK)
            if not line:
                break
            total += len(line)
        yield b"", total, True


def _decode(raw: bytes, where: str, nbytes: int) -> str | BadRecord:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadRecord(where, "bad_utf8", f"invalid UTF-8 at byte {e.start}: {e.reason}",
                         raw.decode("utf-8", "backslashreplace"), nbytes)


def read_shard(path: str | Path, cfg: InputConfig) -> Iterator[Record | BadRecord]:
    path = Path(path)
    fmt = detect_format(path, cfg.format)
    if fmt == "parquet":
        yield from _read_parquet(path, cfg)
        return
    with corpus.open_binary(str(path)) as f:
        for lineno, (raw, nbytes, giant) in enumerate(iter_lines(f, cfg.max_record_bytes), 1):
            where = f"{path}:{lineno}"
            if giant:
                yield BadRecord(where, "giant_record", f"{nbytes} bytes > input.max_record_bytes "
                                f"= {cfg.max_record_bytes}", "", nbytes)
                continue
            if fmt == "jsonl" and not raw.strip():
                continue  # blank separator lines in jsonl are not records
            text = _decode(raw, where, nbytes)
            if isinstance(text, BadRecord):
                yield text
                continue
            if fmt == "txt":
                yield Record(f"{path.name}:{lineno}", where, text, None, {}, nbytes)
                continue
            yield _from_object(text, where, nbytes, cfg, f"{path.name}:{lineno}")


def _from_object(line: str, where: str, nbytes: int, cfg: InputConfig, default_key: str) -> Record | BadRecord:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return BadRecord(where, "bad_json", f"{e.msg} at column {e.colno}", line, nbytes)
    if not isinstance(obj, dict):
        return BadRecord(where, "bad_json", f"expected a JSON object, got {type(obj).__name__}", line, nbytes)
    return _from_dict(obj, line, where, nbytes, cfg, default_key)


def _from_dict(obj: dict, line: str, where: str, nbytes: int, cfg: InputConfig, default_key: str) -> Record | BadRecord:
    text = obj.get(cfg.text_key)
    if not isinstance(text, str):
        what = "missing" if text is None else f"a {type(text).__name__}, not a string"
        return BadRecord(where, "missing_text", f"field '{cfg.text_key}' is {what}", line, nbytes)
    url = obj.get(cfg.url_key)
    key = obj.get(cfg.id_key)
    return Record(str(key) if key is not None else default_key, where, text,
                  url if isinstance(url, str) else None, obj, nbytes)


def _read_parquet(path: Path, cfg: InputConfig) -> Iterator[Record | BadRecord]:
    pq = require("pyarrow.parquet", "reading parquet files")

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for obj in batch.to_pylist():
            row += 1
            text = obj.get(cfg.text_key)
            nbytes = len(text.encode("utf-8", "replace")) if isinstance(text, str) else 0
            if nbytes > cfg.max_record_bytes:
                yield BadRecord(f"{path}:row {row}", "giant_record", f"{nbytes} bytes > input.max_record_bytes "
                                f"= {cfg.max_record_bytes}", "", nbytes)
                continue
            # Non-JSON column types (timestamps, bytes) are kept as their string form.
            fields = json.loads(json.dumps(obj, ensure_ascii=False, default=str))
            yield _from_dict(fields, "", f"{path}:row {row}", nbytes, cfg, f"{path.name}:{row}")


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Our own outputs (always valid); errors here mean a corrupted work directory."""
    hint = "; a corrupt intermediate file: delete it and its .done marker to redo that shard"
    for _, obj in iter_jsonl(path, hint=hint):
        yield obj
