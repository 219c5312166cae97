"""A blend schedule's table at the start and a line wherever its phase changes (pretraining only)."""
from __future__ import annotations

from megactllm.training.callbacks.base import PRIORITY_DATA, Callback


class BlendAnnouncements(Callback):
    name = "blend_schedule"
    priority = PRIORITY_DATA

    def __init__(self, schedule):
        self.schedule = schedule  # megactllm.data.pretrain.blend_schedule.BlendSchedule
        self.first_iteration = None

    def on_train_start(self, trainer) -> None:
        trainer.log.info(self.schedule.table())
        self.first_iteration = trainer.state.iteration

    def on_step_start(self, trainer) -> None:
        iteration = trainer.state.iteration
        note = self.schedule.announcement(iteration + 1, iteration == self.first_iteration)
        if note:
            trainer.log.info(note)
