"""Progress lines for long stages: documents/s, MB/s and ETA, at most every `interval` seconds."""
from __future__ import annotations

import sys
import time


def _fmt_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    def __init__(self, label: str, total_bytes: int | None = None, interval: float = 10.0, stream=None):
        self.label = label
        self.total_bytes = total_bytes
        self.interval = interval
        self.stream = stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.docs = 0
        self.bytes = 0

    def update(self, docs: int = 1, nbytes: int = 0) -> None:
        self.docs += docs
        self.bytes += nbytes
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.emit()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.bytes / elapsed
        parts = [f"{self.label}: {self.docs:,} docs", f"{self.docs / elapsed:,.0f} docs/s"]
        if self.bytes:
            parts.append(f"{rate / 1e6:.2f} MB/s")
        if self.total_bytes:
            left = max(self.total_bytes - self.bytes, 0)
            parts.append(f"{100 * self.bytes / self.total_bytes:.0f}%")
            parts.append(f"ETA {_fmt_eta(left / rate if rate > 0 else float('inf'))}")
        return ", ".join(parts)

    def emit(self) -> None:
        print(self.line(), file=self.stream, flush=True)
