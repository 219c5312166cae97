"""Progress lines for long stages: documents/s, MB/s and ETA, at most every `interval` seconds."""
from __future__ import annotations

import sys

from megactllm.common.progress import STDERR, Progress as ProgressBase


def _fmt_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress(ProgressBase):
    """Counts documents and bytes; the ETA is in bytes of the stage's input."""

    def __init__(self, label: str, total_bytes: int | None = None, interval: float = 10.0, stream=None):
        super().__init__(total=total_bytes, interval=interval, out=stream or STDERR)
        self.label = label
        self.docs = 0

    @property
    def bytes(self) -> int:
        return self.done

    def update(self, docs: int = 1, nbytes: int = 0) -> None:
        self.docs += docs
        self.advance(nbytes)

    def line(self) -> str:
        elapsed = self.elapsed()
        parts = [f"{self.label}: {self.docs:,} docs", f"{self.docs / elapsed:,.0f} docs/s"]
        if self.done:
            parts.append(f"{self.done / elapsed / 1e6:.2f} MB/s")
        if self.total:
            parts.append(f"{100 * self.done / self.total:.0f}%")
            parts.append(f"ETA {_fmt_eta(self.eta_seconds())}")
        return ", ".join(parts)
