"""A progress line with rate and ETA, printed by the reporting rank only."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    def __init__(self, total: int, unit: str, label: str, stream: Optional[TextIO] = sys.stderr, every_s: float = 5.0):
        self.total, self.unit, self.label, self.stream, self.every_s = total, unit, label, stream, every_s
        self.done, self.start = 0, time.perf_counter()
        self._last = self.start

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.stream is not None and (now - self._last >= self.every_s or self.done >= self.total):
            self._last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def line(self) -> str:
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return f"{self.label}: {self.done}/{self.total} {self.unit}, {rate:.2f} {self.unit}/s, ETA {eta:.0f}s"
