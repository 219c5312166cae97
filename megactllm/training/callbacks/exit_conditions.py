"""When to stop early: run.exit_interval, a scheduler's signal or run.exit_duration_minutes.

A signal or the time budget stops every rank at the same iteration (ExitWatch agrees across
ranks); the checkpoint callback then saves, and `megactllm.train` exits "resume me".
"""
from __future__ import annotations

import torch.distributed as dist

from megactllm.training.callbacks.base import PRIORITY_EXIT, Callback
from megactllm.training.run.signals import ExitWatch


class ExitConditions(Callback):
    name = "exit"
    priority = PRIORITY_EXIT

    def __init__(self, exit_interval, exit_duration_minutes, saving: bool):
        self.exit_interval = exit_interval
        self.watch = ExitWatch(exit_duration_minutes)
        self.saving = saving

    def on_iteration_end(self, trainer) -> None:
        iteration = trainer.state.iteration
        if iteration >= trainer.train_iters:
            return
        if self.exit_interval and iteration % self.exit_interval == 0:
            trainer.log.info(f"exit_interval reached at iteration {iteration}")
            trainer.request_stop(None)
            return
        stop = self.watch.check()  # a collective: the same answer on every rank
        if stop:
            saving = "with a checkpoint, to be resumed" if self.saving else "WITHOUT a checkpoint (no checkpoint.save)"
            trainer.log.warning(f"{stop}: stopping at iteration {iteration} {saving}")
            trainer.request_stop(stop)

    def on_train_end(self, trainer) -> None:
        if trainer.result.stop_reason and dist.is_initialized():
            dist.barrier()  # no rank leaves (and ends its launcher) before rank 0 published the checkpoint
