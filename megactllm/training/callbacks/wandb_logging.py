"""W&B logging on rank 0 (megactllm.training.run.wandb_sink): the run opens when training starts and
finishes on every way out of the loop (the end, a stop by signal or exit_interval: exit code 0;
an exception: 1), so its history is complete whatever ended the process."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from megactllm.training.callbacks.base import Callback
from megactllm.training.run.wandb_sink import WandbSink, wandb_wanted


class WandbLogging(Callback):
    def __init__(self, cfg, rank: int):
        # Every rank builds the sink (it imports wandb): a missing package stops all ranks alike.
        self.sink = WandbSink(cfg)
        self.rank = rank
        self.ended_cleanly = False

    def on_train_start(self, trainer) -> None:
        if self.rank == 0:
            trainer.log.info(self.sink.open(Path(trainer.log.log_dir)))
            trainer.log.add_sink(self.sink)

    def on_train_end(self, trainer) -> None:
        self.ended_cleanly = True

    def on_close(self, trainer) -> None:
        self.sink.finish(exit_code=0 if self.ended_cleanly else 1)


def wandb_callback(cfg, rank: int) -> Optional[WandbLogging]:
    return WandbLogging(cfg, rank) if wandb_wanted(cfg.train) else None
