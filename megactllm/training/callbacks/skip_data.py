"""Sample windows of the training order that are never read: stability.skip_samples (given by a person,
PaLM's "skip the batches around a spike") and the windows a spike rollback recorded in the train state.

A step that would begin inside a window begins at its end instead; the iteration count and the LR
schedule are not moved, only the data position (consumed_samples).
"""
from __future__ import annotations

from megactllm.errors import UserError
from megactllm.training.callbacks.base import Callback


class SkipSamplesError(UserError, ValueError):
    pass


def parse_windows(spec, where: str = "stability.skip_samples") -> list[list[int]]:
    windows = []
    for i, w in enumerate(spec or []):
        if not (isinstance(w, (list, tuple)) and len(w) == 2 and all(isinstance(x, int) for x in w) and 0 <= w[0] < w[1]):
            raise SkipSamplesError(f"{where}[{i}]={w!r}: each window is [start, end) of sample positions, 0 <= start < end")
        windows.append([int(w[0]), int(w[1])])
    return windows


def window_samples(windows: list) -> int:
    return sum(end - start for start, end in windows)


class SkipDataWindows(Callback):
    def __init__(self, configured: list):
        self.configured = parse_windows(configured)

    def on_step_start(self, trainer) -> None:
        s = trainer.state
        windows = sorted(self.configured + [list(w) for w in s.skipped_samples])
        position = s.consumed_samples
        for start, end in windows:  # sorted: a window ending inside the next one chains into it
            if start <= position < end:
                position = end
        if position != s.consumed_samples:
            trainer.log.info(
                f"iteration {s.iteration + 1}: skipping samples [{s.consumed_samples}, {position}) "
                f"({position - s.consumed_samples} samples, stability.skip_samples or a spike rollback)"
            )
            s.consumed_samples = position
