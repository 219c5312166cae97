"""Reading benchmark CSV files the way their publishers wrote them (UTF-8, optional BOM, LF or
CRLF line ends, quoted fields with embedded newlines), with errors that name file and row."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from megactllm.eval.errors import EvalDataError

LETTERS = ("A", "B", "C", "D")


def read_rows(path: Path, header: bool) -> tuple[Optional[list[str]], list[tuple[int, list[str]]]]:
    """(header, [(row number, fields)]); row numbers count from 1 at the first line of the file."""
    try:
        # utf-8-sig drops a BOM; newline="" lets csv handle CRLF and quoted newlines itself.
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise EvalDataError(path, f"not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise EvalDataError(path, f"malformed CSV: {e}") from None
    numbered = [(i + 1, [c.strip("\r") for c in r]) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not header:
        return None, numbered
    if not numbered:
        raise EvalDataError(path, "empty file: expected a header row")
    return [c.strip() for c in numbered[0][1]], numbered[1:]


def column_index(path: Path, header: list[str], names: tuple[str, ...]) -> dict[str, int]:
    """Positions of the required columns (matched case-insensitively); a missing one is named."""
    lowered = {name.lower(): i for i, name in enumerate(header)}
    missing = [n for n in names if n.lower() not in lowered]
    if missing:
        raise EvalDataError(path, f"missing column(s) {missing}; header is {header}", row=1)
    return {n: lowered[n.lower()] for n in names}


def answer_index(path: Path, row: int, value: str) -> int:
    letter = value.strip().upper()
    if letter not in LETTERS:
        raise EvalDataError(path, f"answer {value!r} is not one of A, B, C, D", row=row)
    return LETTERS.index(letter)
