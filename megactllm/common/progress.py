"""One progress reporter for long jobs: counts work, paces its lines, knows rates and the ETA.

A package subclasses `Progress` only to say what its line holds (`line()`) and how it counts
(clean: documents and bytes; convert: tensors and bytes; eval: questions; preprocess: documents,
tokens and bytes). Where the line goes is `out`: a text stream, a callable taking the line (a
logger, a rank-0 reporter), None for silence, or STDERR (the default): whatever sys.stderr is
when a line is printed, not when the reporter was made (tests and tools swap it).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO, Union

STDERR = "<stderr at print time>"

Output = Union[TextIO, Callable[[str], None], None]


class Progress:
    """`done` counts toward `total` (the quantity the ETA is measured in, usually bytes).

    A line is printed when `interval` seconds have passed since the last one; `first_at_once`
    prints at the first update, `at_total` also when the total is reached.
    """

    def __init__(self, total: Optional[float] = None, interval: float = 5.0, out: Output = STDERR,
                 first_at_once: bool = False, at_total: bool = False):
        self.total = total
        self.interval = interval
        self.out = out
        self.at_total = at_total
        self.done = 0
        self.start = time.monotonic()
        self.last = float("-inf") if first_at_once else self.start

    def elapsed(self, now: Optional[float] = None) -> float:
        return max((time.monotonic() if now is None else now) - self.start, 1e-9)

    def per_second(self, amount: Optional[float] = None, now: Optional[float] = None) -> float:
        """`amount` (default: done) divided by the seconds since the start."""
        return (self.done if amount is None else amount) / self.elapsed(now)

    def fraction(self) -> float:
        """The share of the total done, at most 1 (0 without a total)."""
        return min(self.done / self.total, 1.0) if self.total else 0.0

    def eta_seconds(self, now: Optional[float] = None) -> float:
        """Seconds left at the rate so far: infinity before any progress or without a total."""
        rate = self.per_second(now=now)
        if not self.total or rate <= 0:
            return float("inf")
        return max(self.total - self.done, 0) / rate

    def advance(self, amount: float = 0, *line_args) -> bool:
        """Count `amount` more done; print a line if one is due (returns whether it did)."""
        self.done += amount
        now = time.monotonic()
        reached = self.at_total and self.total is not None and self.done >= self.total
        if now - self.last < self.interval and not reached:
            return False
        self.last = now
        self.emit(*line_args)
        return True

    def emit(self, *line_args) -> None:
        if self.out is not None:
            self.say(self.line(*line_args))

    def say(self, text: str) -> None:
        if self.out is None:
            return
        if callable(self.out):
            self.out(text)
        else:
            print(text, file=sys.stderr if self.out is STDERR else self.out, flush=True)

    def line(self, *args) -> str:
        raise NotImplementedError
