"""W&B logging on rank 0 (megactllm.training.run.wandb_sink): the run opens when training starts and
finishes on every way out of the loop: the end or a stop by signal or exit_interval (on_train_end,
exit code 0) or an exception (on_error, exit code 1), so its history is complete whatever ended
the process. Its run id is saved in the checkpoint: a resumed run continues the same W&B run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from megactllm.training.callbacks.base import PRIORITY_LOG, Callback
from megactllm.training.run.wandb_sink import WandbSink, wandb_wanted


class WandbLogging(Callback):
    name = "wandb"
    # Opens after the run lock (a run refused its directory opens no W&B run) and before the
    # ThroughputLogger's first record; finishes after every callback's end-of-run records.
    priority = PRIORITY_LOG + 1

    def __init__(self, cfg, rank: int):
        # Every rank builds the sink (it imports wandb): a missing package stops all ranks alike.
        self.sink = WandbSink(cfg)
        self.rank = rank
        self.run_id: Optional[str] = None  # from the checkpoint; None: the run directory's, or a new one

    def on_train_start(self, trainer) -> None:
        if self.rank == 0:
            trainer.log.info(self.sink.open(Path(trainer.log.log_dir), self.run_id))
            self.run_id = self.sink.run_id
            trainer.log.add_sink(self.sink)

    def on_error(self, trainer, exc: BaseException) -> None:
        self.sink.finish(exit_code=1)

    def on_close(self, trainer) -> None:
        self.sink.finish(exit_code=0)  # a no-op after on_error

    def state_dict(self) -> dict:
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state.get("run_id")


def wandb_callback(cfg, rank: int) -> Optional[WandbLogging]:
    return WandbLogging(cfg, rank) if wandb_wanted(cfg.wandb) else None
