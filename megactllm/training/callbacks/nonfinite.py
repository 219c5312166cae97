"""Non-finite losses and gradient norms: skip-and-count them, stop after too many in a row.

A skipped iteration still consumes its data (the next step reads fresh samples, as Megatron does)
but changes no weight, optimizer moment or learning rate. `max_consecutive` skips in a row mean the
run has diverged rather than hit a bad batch: the loop stops with NonFiniteLossError before saving,
so the last good checkpoint stays the latest. While a streak runs, no save is allowed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megactllm.training.callbacks.base import PRIORITY_GUARD, Callback, Step


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class NonFiniteGuard:
    max_consecutive: int
    in_a_row: int = 0
    total: int = 0

    def record(self, iteration: int, skipped_nonfinite: bool, last_checkpoint: Optional[str]) -> None:
        """Note one iteration's outcome; raises once `max_consecutive` non-finite steps came in a row."""
        if not skipped_nonfinite:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        if self.max_consecutive and self.in_a_row >= self.max_consecutive:
            where = (
                f"the last good checkpoint is {last_checkpoint} (left untouched)"
                if last_checkpoint
                else "no checkpoint was saved in this run"
            )
            raise NonFiniteLossError(
                f"{self.in_a_row} consecutive iterations ending at {iteration} had a non-finite loss or gradient "
                f"norm and were skipped (stability.max_consecutive_nonfinite={self.max_consecutive}); the run has "
                f"diverged: {where}. Resume from it with a lower learning rate or more warmup, or inspect the data."
            )


class NonFiniteStop(Callback):
    name = "nonfinite"
    priority = PRIORITY_GUARD

    def __init__(self, max_consecutive: int):
        self.guard = NonFiniteGuard(max_consecutive)

    def on_step_end(self, trainer, step: Step) -> None:
        # Raises NonFiniteLossError after too many in a row, naming the last good checkpoint.
        self.guard.record(step.iteration, step.outcome.skip_reason == "non-finite", trainer.last_checkpoint)

    def save_allowed(self, trainer) -> bool:
        # No save while a non-finite streak runs: the last good checkpoint must stay the latest.
        return self.guard.in_a_row == 0
