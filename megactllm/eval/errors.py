"""Errors of the evaluation package: each names the file and, where there is one, the row, or the
flag or task that cannot work. All are UserErrors (one `error:` line, exit 2); anything else that
escapes evaluation is a bug and keeps its traceback."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

from megactllm.errors import UserError


class EvalDataError(UserError, ValueError):
    """A task file that cannot be read as the benchmark's layout."""

    def __init__(self, path, message: str, row: Optional[int] = None):
        self.path, self.row = str(path), row
        where = f"{path}, row {row}" if row is not None else str(path)
        super().__init__(f"{where}: {message}")


class EvalSetupError(UserError, ValueError):
    """An evaluation that cannot run as asked: an unknown task or benchmark, a task without the flag
    or file it needs, flags that do not go together, a model that lacks what a task needs."""


class EvalInputNotFoundError(UserError, FileNotFoundError):
    """A benchmark directory or a run's checkpoints that are not where the options say."""


@contextmanager
def utf8_file(path) -> Iterator[None]:
    """Reading a user's text file inside: bytes that are not UTF-8 are an EvalDataError naming it
    (UnicodeDecodeError is a ValueError the entry point would otherwise take for a bug)."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise EvalDataError(path, f"not UTF-8 text ({e})") from None
