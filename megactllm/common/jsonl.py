"""JSON Lines: reading with errors that name file:line, and atomic writing.

Readers of users' files pass their own UserError subclass so that the entry point prints one
`error:` line naming the file and line; readers of our own intermediate files keep ValueError.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import IO, Any, Iterable, Iterator

from megactllm.common.atomic import atomic_write


def jsonl_lines(path: str | os.PathLike, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(1-based line number, line) for every non-blank line: for readers that judge each record
    themselves (a bad line skipped, or an error in their own words)."""
    with open(path, encoding=encoding) as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                yield line_no, line


def iter_jsonl(path: str | os.PathLike, error: type = ValueError, hint: str = "",
               objects_only: bool = False, encoding: str = "utf-8") -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed value) for every non-blank line of `path`.

    A line that is not JSON (or, with `objects_only`, not a JSON object) raises `error` with
    "<path>:<line>: ..." and `hint` appended (what to do about it).
    """
    for line_no, line in jsonl_lines(path, encoding):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{line_no}: not valid JSON ({e}){hint}") from None
        if objects_only and not isinstance(value, dict):
            raise error(f"{path}:{line_no}: expected a JSON object, got {type(value).__name__}{hint}")
        yield line_no, value


class JsonlWriter:
    """Writes one JSON value per line (UTF-8 kept as is) to an open text file."""

    def __init__(self, f: IO[str]):
        self.f = f

    def write_json(self, obj: Any) -> None:
        self.f.write(json.dumps(obj, ensure_ascii=False))
        self.f.write("\n")


@contextlib.contextmanager
def atomic_jsonl_writer(path: str | os.PathLike, fsync: bool = True) -> Iterator[JsonlWriter]:
    """A JsonlWriter whose file appears at `path` only when the block ends without an exception."""
    with atomic_write(path, "w", fsync=fsync) as f:
        yield JsonlWriter(f)


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[Any], fsync: bool = True) -> None:
    with atomic_jsonl_writer(path, fsync=fsync) as out:
        for record in records:
            out.write_json(record)
