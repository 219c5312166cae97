"""Which steps are spikes: the loss and gradient-norm statistics of the last applied steps.

A step is a spike when its loss or its gradient norm lies more than `sigma` standard deviations
above the mean of the last `window` applied steps (skipped steps never enter the window, so a
burst of junk cannot raise the bar for itself). Until the window holds `min_steps(window)`
values nothing is a spike: early training moves too fast for a mean to mean anything.

The window is plain numbers (`state()` / `SpikeWindow.from_state`) so it travels in the
checkpoint's train state and a resumed run decides exactly as the uninterrupted one would.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Optional


def min_steps(window: int) -> int:
    """Applied steps the window must hold before any step can be a spike: a quarter, at least 16."""
    return max(min(16, window), window // 4)


@dataclass
class SpikeVerdict:
    spike: bool
    # Why (the first value over its bar), e.g. "loss 11.2 > 7.9 (mean 7.1 + 6 x 0.13)"; None when not a spike.
    reason: Optional[str] = None


class SpikeWindow:
    def __init__(self, window: int, sigma: float):
        # stability.spike_window >= 2 (a standard deviation) and spike_sigma > 0: the recipe checks them.
        self.window = window
        self.sigma = sigma
        self.values: deque = deque(maxlen=window)  # (loss, grad_norm) of applied steps

    def ready(self) -> bool:
        return len(self.values) >= min_steps(self.window)

    def _bar(self, column: int) -> tuple[float, float, float]:
        xs = [v[column] for v in self.values]
        mean = math.fsum(xs) / len(xs)
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / len(xs))
        std = max(std, 1e-6 * abs(mean))  # equal values: a relative floor, not a zero bar
        return mean + self.sigma * std, mean, std

    def judge(self, loss: float, grad_norm: float) -> SpikeVerdict:
        if not self.ready():
            return SpikeVerdict(False)
        for name, column, value in (("loss", 0, loss), ("grad norm", 1, grad_norm)):
            bar, mean, std = self._bar(column)
            if value > bar:
                return SpikeVerdict(True, f"{name} {value:.4g} > {bar:.4g} (mean {mean:.4g} + {self.sigma:g} x std {std:.3g})")
        return SpikeVerdict(False)

    def record(self, loss: float, grad_norm: float) -> None:
        """Note an applied step."""
        self.values.append((float(loss), float(grad_norm)))

    def state(self) -> dict:
        return {"window": self.window, "values": [list(v) for v in self.values]}

    @classmethod
    def from_state(cls, window: int, sigma: float, state: Optional[dict]) -> "SpikeWindow":
        w = cls(window, sigma)
        for loss, grad_norm in (state or {}).get("values", [])[-window:]:
            w.record(loss, grad_norm)
        return w
