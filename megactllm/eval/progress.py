"""A progress line with rate and ETA, printed by the reporting rank only (the others pass stream=None)."""
from __future__ import annotations

import sys
from typing import Optional, TextIO

from megactllm.common.progress import STDERR, Progress as ProgressBase


class Progress(ProgressBase):
    """Called with the number of items just answered."""

    def __init__(self, total: int, unit: str, label: str, stream: Optional[TextIO] = STDERR, every_s: float = 5.0):
        super().__init__(total=total, interval=every_s, out=stream, at_total=True)
        self.unit, self.label = unit, label

    def __call__(self, n: int) -> None:
        self.advance(n)

    def line(self) -> str:
        rate = self.per_second()
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return f"{self.label}: {self.done}/{self.total} {self.unit}, {rate:.2f} {self.unit}/s, ETA {eta:.0f}s"
