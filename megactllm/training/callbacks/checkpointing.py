"""The save policy: every checkpoint.interval iterations and at the end. What a checkpoint holds and
how it is written (synchronously or in the background with checkpoint.async_save) is the loop's
(Trainer.save_checkpoint) and the checkpoint package's."""
from __future__ import annotations

from megactllm.training.callbacks.base import PRIORITY_SAVE, Callback


class Checkpointing(Callback):
    name = "checkpointing"
    priority = PRIORITY_SAVE

    def __init__(self, save_dir, save_interval):
        self.save_dir = save_dir
        self.save_interval = save_interval
        self.first_iteration = None

    def on_train_start(self, trainer) -> None:
        self.first_iteration = trainer.state.iteration

    def on_step_start(self, trainer) -> None:
        trainer.publish_checkpoint(blocking=False)

    def on_save_boundary(self, trainer) -> None:
        i = trainer.state.iteration
        if self.save_dir and self.save_interval and i % self.save_interval == 0 and trainer.save_allowed():
            trainer.save_checkpoint()

    def on_train_end(self, trainer) -> None:
        i = trainer.state.iteration
        ran = i > self.first_iteration
        saved_now = self.save_interval and i % self.save_interval == 0
        if ran and self.save_dir and not saved_now and trainer.save_allowed():
            trainer.save_checkpoint()
        trainer.publish_checkpoint(blocking=True)
