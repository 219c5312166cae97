"""Progress of a conversion: tensors and bytes done, rate and time left, at most every few seconds."""
from __future__ import annotations

import sys
from typing import Optional, TextIO

from megactllm.common.progress import STDERR, Progress as ProgressBase


class ConversionProgress(ProgressBase):
    """Counts tensors and bytes; `stream=None` silences it (library callers, tests)."""

    def __init__(self, label: str, total_bytes: int, stream: Optional[TextIO] = STDERR, interval: float = 5.0):
        super().__init__(total=max(total_bytes, 1), interval=interval, out=stream, first_at_once=True, at_total=True)
        self.label = label
        self.done_tensors = 0

    @property
    def total_bytes(self) -> int:
        return self.total

    @total_bytes.setter
    def total_bytes(self, value: int) -> None:  # the importer learns the size once the model is built
        self.total = value

    @property
    def done_bytes(self) -> int:
        return self.done

    def update(self, nbytes: int, name: str = "") -> None:
        self.done_tensors += 1
        self.advance(nbytes, name)

    def line(self, name: str = "") -> str:
        rate = self.per_second()
        left = self.eta_seconds()
        eta = f"{left:.0f}s" if left != float("inf") else "?"
        return (f"[{self.label}] {self.done / self.total:6.1%}  {self.done_tensors} tensors  "
                f"{self.done / 2**30:.2f}/{self.total / 2**30:.2f} GiB  {rate / 2**20:.0f} MiB/s  "
                f"eta {eta}  {name}")

    def message(self, text: str) -> None:
        self.say(f"[{self.label}] {text}")
