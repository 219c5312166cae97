"""Errors of the evaluation package: each names the file and, where there is one, the row."""
from __future__ import annotations

from typing import Optional

from megactllm.errors import UserError


class EvalDataError(UserError, ValueError):
    """A task file that cannot be read as the benchmark's layout."""

    def __init__(self, path, message: str, row: Optional[int] = None):
        self.path, self.row = str(path), row
        where = f"{path}, row {row}" if row is not None else str(path)
        super().__init__(f"{where}: {message}")
