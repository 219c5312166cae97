"""Spiky-step skipping (train.skip_spiky_steps) and rollback (train.spike_rollback_after).

Once the grad norm is known and before the update, the step's loss and grad norm are judged
against the window of recent applied steps (megactllm.training.spikes); every rank judges, and a
MAX all-reduce of the verdict makes the decision one. A spike's update is vetoed: weights and Adam
state stay, the LR schedule and the data position go on. The step is logged at once with
`skipped_spike: true`.

After spike_rollback_after spikes in a row the run reloads its last checkpoint (saves wait while
the streak runs, so it predates the streak), records the samples read since as a skipped window
in the train state (megactllm.training.callbacks.skip_data jumps over it) and saves at once, so a
later resume never reads that window again either.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from megactllm.errors import UserError
from megactllm.training.callbacks.base import Callback, Step
from megactllm.training.spikes import SpikeWindow, min_steps


class SpikeConfigError(UserError, ValueError):
    pass


class SpikeRollbackError(RuntimeError):
    pass


class SpikeSkipping(Callback):
    def __init__(self, cfg):
        t = cfg.train
        if t.spike_rollback_after and not (t.save and t.save_interval):
            raise SpikeConfigError(
                f"train.spike_rollback_after={t.spike_rollback_after} reloads the last checkpoint: set train.save and train.save_interval"
            )
        self.window_size, self.sigma = t.spike_window, t.spike_sigma
        self.window = SpikeWindow(t.spike_window, t.spike_sigma)  # replaced from the train state at the start
        self.rollback_after = t.spike_rollback_after
        self.max_rollbacks = t.spike_max_rollbacks
        self.in_a_row = 0
        self.reason: Optional[str] = None

    def _load_window(self, trainer) -> None:
        self.window = SpikeWindow.from_state(self.window_size, self.sigma, trainer.state.spike_window)

    def on_train_start(self, trainer) -> None:
        self._load_window(trainer)  # a resumed run's window, so it decides as the uninterrupted one would

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

    def before_save(self, trainer) -> None:
        trainer.state.spike_window = self.window.state()

    def save_allowed(self, trainer) -> bool:
        return self.in_a_row == 0  # the last checkpoint must predate a streak a rollback returns to

    def on_iteration_end(self, trainer) -> None:
        if self.rollback_after and self.in_a_row >= self.rollback_after:
            self._roll_back(trainer)

    def _roll_back(self, trainer) -> None:
        from megactllm.training.callbacks.checkpointing import Checkpointing

        s = trainer.state
        path, last_iteration, end = trainer.last_checkpoint, s.iteration, s.consumed_samples
        if path is None:
            trainer.log.warning(f"{self.in_a_row} spikes in a row ending at iteration {last_iteration}, but no checkpoint "
                                "to roll back to yet: skipping on")
            self.in_a_row = 0
            return
        if s.spike_rollbacks >= self.max_rollbacks:
            raise SpikeRollbackError(
                f"{self.in_a_row} spikes in a row ending at iteration {last_iteration} after {s.spike_rollbacks} rollbacks "
                f"(train.spike_max_rollbacks={self.max_rollbacks}): the run keeps spiking; the last checkpoint is {path}. "
                "Inspect the data at these samples, or lower the learning rate."
            )
        trainer.restore_checkpoint(path)
        s = trainer.state
        start = s.consumed_samples
        s.skipped_samples = sorted([list(w) for w in s.skipped_samples] + [[start, end]])
        s.spike_rollbacks += 1
        self._load_window(trainer)
        self.in_a_row = 0
        trainer.log.warning(
            f"spike rollback: {self.rollback_after} spikes in a row ending at iteration {last_iteration}; reloaded {path} "
            f"(iteration {s.iteration}) and skip the {end - start} samples [{start}, {end}) read since"
        )
        trainer.log.event({"kind": "rollback", "iteration": s.iteration, "from_iteration": last_iteration,
                           "checkpoint": path, "skipped_samples": [start, end], "skipped_sample_count": end - start})
        # Saved at once, so that a resume never reads the window again.
        trainer.callbacks.of(Checkpointing).save(trainer)
