"""Spiky-step skipping (stability.skip_spiky_steps) and rollback (stability.spike_rollback_after).

Once the grad norm is known and before the update, the step's loss and grad norm are judged
against the window of recent applied steps (SpikeWindow below); every rank judges, and a
MAX all-reduce of the verdict makes the decision one. A spike's update is vetoed: weights and Adam
state stay, the LR schedule and the data position go on. The step is logged at once with
`skipped_spike: true`.

After spike_rollback_after spikes in a row the run reloads its last checkpoint (saves wait while
the streak runs, so it predates the streak) through the loop's restore_checkpoint, asks the loop
to skip the samples read since (megactllm.training.callbacks.skip_data records the window and
jumps over it) and saves at once, so a later resume never reads that window again either.

What a spike is: a step whose loss or gradient norm lies more than `sigma` standard deviations
above the mean of the last `window` applied steps (skipped steps never enter the window, so a
burst of junk cannot raise the bar for itself). Until the window holds `min_steps(window)`
values nothing is a spike: early training moves too fast for a mean to mean anything.

The window is plain numbers (`state()` / `SpikeWindow.from_state`) so it travels in the
checkpoint as this callback's state and a resumed run decides exactly as the uninterrupted one would.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from megactllm.training.callbacks.base import PRIORITY_NOTES, Callback, Step


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


class SpikeRollbackError(RuntimeError):
    pass


class SpikeSkipping(Callback):
    name = "spikes"
    priority = PRIORITY_NOTES + 1  # its skipped_spike note first, then the straggler report's

    def __init__(self, stability):
        t = stability  # checked by the recipe (megactllm.config): window >= 2, sigma > 0, rollbacks saved
        self.window_size, self.sigma = t.spike_window, t.spike_sigma
        self.window = SpikeWindow(t.spike_window, t.spike_sigma)
        self.rollback_after = t.spike_rollback_after
        self.max_rollbacks = t.spike_max_rollbacks
        self.rollbacks = 0
        self.in_a_row = 0
        self.reason: Optional[str] = None

    # A resumed run's window, so it decides as the uninterrupted one would; a streak is never saved
    # (no save while one runs), so in_a_row starts at 0.
    def state_dict(self) -> dict:
        return {"window": self.window.state(), "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict) -> None:
        self.window = SpikeWindow.from_state(self.window_size, self.sigma, state.get("window"))
        self.rollbacks = int(state.get("rollbacks", 0))
        self.in_a_row = 0

    def legacy_state(self, train_state: dict) -> Optional[dict]:
        # Up to 2c88b3a the loop's train state held the window and the rollback count.
        if train_state.get("spike_window") is None and not train_state.get("spike_rollbacks"):
            return None
        return {"window": train_state.get("spike_window"), "rollbacks": train_state.get("spike_rollbacks", 0)}

    def veto_update(self, trainer, loss: float, grad_norm: float) -> Optional[str]:
        verdict = self.window.judge(loss, grad_norm)
        if dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([int(verdict.spike)], dtype=torch.int32, device=trainer.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if int(flag.item()) and not verdict.spike:
                verdict.reason = "another rank judged it a spike"
            verdict.spike = bool(flag.item())
        self.reason = verdict.reason if verdict.spike else None
        return f"spike: {verdict.reason}" if verdict.spike else None

    def on_step_end(self, trainer, step: Step) -> None:
        if step.outcome.vetoed and str(step.outcome.skip_reason).startswith("spike"):
            self.in_a_row += 1
            step.notes["skipped_spike"] = True
            if not self.rollback_after and self.in_a_row >= min_steps(self.window_size):
                # As many spikes in a row as the window's minimum is a new level, not a burst: the
                # window never updates while every step is skipped, so it would stay stuck. Start it
                # afresh (nothing is judged until it refills).
                trainer.log.warning(f"{self.in_a_row} spikes in a row: the loss/grad-norm level moved; "
                                    "restarting the spike window")
                self.window = SpikeWindow(self.window_size, self.sigma)
                self.in_a_row = 0
        elif step.outcome.updated:
            self.window.record(step.loss, step.outcome.grad_norm)
            self.in_a_row = 0

    def save_allowed(self, trainer) -> bool:
        return self.in_a_row == 0  # the last checkpoint must predate a streak a rollback returns to

    def on_iteration_end(self, trainer) -> None:
        if self.rollback_after and self.in_a_row >= self.rollback_after:
            self._roll_back(trainer)

    def _roll_back(self, trainer) -> None:
        s = trainer.state
        path, last_iteration, end = trainer.last_checkpoint, s.iteration, s.consumed_samples
        if path is None:
            trainer.log.warning(f"{self.in_a_row} spikes in a row ending at iteration {last_iteration}, but no checkpoint "
                                "to roll back to yet: skipping on")
            self.in_a_row = 0
            return
        if self.rollbacks >= self.max_rollbacks:
            raise SpikeRollbackError(
                f"{self.in_a_row} spikes in a row ending at iteration {last_iteration} after {self.rollbacks} rollbacks "
                f"(stability.spike_max_rollbacks={self.max_rollbacks}): the run keeps spiking; the last checkpoint is {path}. "
                "Inspect the data at these samples, or lower the learning rate."
            )
        streak = self.in_a_row
        trainer.restore_checkpoint(path)  # every callback's state too: this one's window and count
        s = trainer.state
        start = s.consumed_samples
        trainer.skip_samples(start, end)
        self.rollbacks += 1
        trainer.log.warning(
            f"spike rollback: {streak} spikes in a row ending at iteration {last_iteration}; reloaded {path} "
            f"(iteration {s.iteration}) and skip the {end - start} samples [{start}, {end}) read since"
        )
        trainer.log.event({"kind": "rollback", "iteration": s.iteration, "from_iteration": last_iteration,
                           "checkpoint": path, "skipped_samples": [start, end], "skipped_sample_count": end - start})
        # Saved at once, so that a resume never reads the window again.
        trainer.save_checkpoint()
