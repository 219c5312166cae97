"""The save policy: every train.save_interval iterations and at the end, synchronously or in the
background (train.async_save: one save in flight, published once every rank wrote it). The
format, publishing and the disk checks are the Checkpointer's (megactllm.checkpoint)."""
from __future__ import annotations

from dataclasses import asdict

from megactllm.checkpoint import Checkpointer
from megactllm.training.callbacks.base import Callback
from megactllm.training.rng import capture_rng_state


class Checkpointing(Callback):
    def __init__(self, save_dir, save_interval, async_save: bool):
        self.save_dir = save_dir
        self.save_interval = save_interval
        self.checkpointer = Checkpointer(save_dir, async_save=async_save) if save_dir else None
        self.first_iteration = None

    def on_train_start(self, trainer) -> None:
        self.first_iteration = trainer.state.iteration
        if self.checkpointer is not None:
            self.checkpointer.warn = trainer.log.warning

    def on_step_start(self, trainer) -> None:
        self._publish(trainer, blocking=False)

    def on_save_boundary(self, trainer) -> None:
        i = trainer.state.iteration
        if self.save_dir and self.save_interval and i % self.save_interval == 0 and trainer.callbacks.save_allowed(trainer):
            self.save(trainer)

    def on_train_end(self, trainer) -> None:
        i = trainer.state.iteration
        ran = i > self.first_iteration
        saved_now = self.save_interval and i % self.save_interval == 0
        if ran and self.save_dir and not saved_now and trainer.callbacks.save_allowed(trainer):
            self.save(trainer)
        self._publish(trainer, blocking=True)

    def _publish(self, trainer, blocking: bool) -> None:
        """Publish a finished background save (collective; a no-op with none in flight)."""
        if self.checkpointer is None or self.checkpointer.in_flight is None:
            return
        trainer.callbacks.call("before_save", trainer)  # publishing writes the directory's latest pointer
        published = self.checkpointer.poll(blocking)
        if published is not None:
            trainer.last_checkpoint = str(published)
            trainer.log.info(f"saved checkpoint {published} (written in the background)")

    def save(self, trainer) -> None:
        self._publish(trainer, blocking=True)  # one save in flight at a time
        trainer.callbacks.call("before_save", trainer)
        path = self.checkpointer.save(
            trainer.state.iteration,
            trainer.model,
            trainer.cfg,
            optimizer=trainer.optimizer,
            scheduler=trainer.scheduler,
            train_state=asdict(trainer.state),
            tokenizer_path=trainer.tokenizer_path,
            rng_state=capture_rng_state(),
        )
        if self.checkpointer.in_flight is not None:
            return
        trainer.last_checkpoint = str(path)
        trainer.log.info(f"saved checkpoint {path}")
