"""The non-finite guard: counts skipped non-finite steps, stops a diverged run, holds saves meanwhile."""
from __future__ import annotations

from megactllm.training.callbacks.base import Callback, Step
from megactllm.training.nonfinite import NonFiniteGuard


class NonFiniteStop(Callback):
    def __init__(self, max_consecutive: int):
        self.guard = NonFiniteGuard(max_consecutive)

    def on_step_end(self, trainer, step: Step) -> None:
        # Raises NonFiniteLossError after too many in a row, naming the last good checkpoint.
        self.guard.record(step.iteration, step.outcome.skip_reason == "non-finite", trainer.last_checkpoint)

    def save_allowed(self, trainer) -> bool:
        # No save while a non-finite streak runs: the last good checkpoint must stay the latest.
        return self.guard.in_a_row == 0
