"""Progress of a conversion: tensors and bytes done, rate and time left, at most every few seconds."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class ConversionProgress:
    def __init__(self, label: str, total_bytes: int, stream: Optional[TextIO] = sys.stderr, interval: float = 5.0):
        self.label = label
        self.total_bytes = max(total_bytes, 1)
        self.stream = stream  # None silences it (library callers, tests)
        self.interval = interval
        self.start = time.monotonic()
        self.last_emit = 0.0
        self.done_bytes = 0
        self.done_tensors = 0

    def update(self, nbytes: int, name: str = "") -> None:
        self.done_bytes += nbytes
        self.done_tensors += 1
        now = time.monotonic()
        if now - self.last_emit >= self.interval or self.done_bytes >= self.total_bytes:
            self.last_emit = now
            self.emit(name)

    def emit(self, name: str = "") -> None:
        if self.stream is None:
            return
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done_bytes / elapsed
        left = (self.total_bytes - self.done_bytes) / rate if rate > 0 else float("inf")
        eta = f"{left:.0f}s" if left != float("inf") else "?"
        print(
            f"[{self.label}] {self.done_bytes / self.total_bytes:6.1%}  {self.done_tensors} tensors  "
            f"{self.done_bytes / 2**30:.2f}/{self.total_bytes / 2**30:.2f} GiB  {rate / 2**20:.0f} MiB/s  "
            f"eta {eta}  {name}",
            file=self.stream,
            flush=True,
        )

    def message(self, text: str) -> None:
        if self.stream is not None:
            print(f"[{self.label}] {text}", file=self.stream, flush=True)
