"""Sample windows of the training order that are never read: stability.skip_samples (given by a person,
PaLM's "skip the batches around a spike") and the windows recorded during the run (a spike
rollback asks the loop to skip the samples read since; Trainer.skip_samples tells this callback).

A step that would begin inside a window begins at its end instead; the iteration count and the LR
schedule are not moved, only the data position (consumed_samples). The recorded windows are this
callback's saved state, so a resumed run never reads them either.
"""
from __future__ import annotations

from typing import Optional

from megactllm.errors import UserError
from megactllm.training.callbacks.base import PRIORITY_DATA, Callback


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
    name = "skip_data"
    priority = PRIORITY_DATA

    def __init__(self, configured: list):
        self.configured = parse_windows(configured)
        self.recorded: list = []  # [start, end) windows recorded during the run (spike rollbacks)

    def on_samples_skipped(self, trainer, start: int, end: int) -> None:
        self.recorded = sorted(self.recorded + [[int(start), int(end)]])

    def on_step_start(self, trainer) -> None:
        s = trainer.state
        windows = sorted(self.configured + self.recorded)
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

    def state_dict(self) -> dict:
        return {"skipped_samples": [list(w) for w in self.recorded]} if self.recorded else {}

    def load_state_dict(self, state: dict) -> None:
        self.recorded = parse_windows(state.get("skipped_samples"), "the checkpoint's skipped_samples")

    def legacy_state(self, train_state: dict) -> Optional[dict]:
        # Up to 2c88b3a the loop's train state held the rollbacks' windows.
        windows = train_state.get("skipped_samples")
        return {"skipped_samples": windows} if windows else None
