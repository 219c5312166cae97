"""The loss-curve PNG beside metrics.jsonl, drawn by rank 0 when the run ends (even by an error)."""
from __future__ import annotations

from megactllm.training.callbacks.base import Callback
from megactllm.training.run.metrics import plot_loss_curve


class LossPlot(Callback):
    def on_close(self, trainer) -> None:
        if trainer.rank != 0 or trainer.log.log_dir is None:
            return
        try:
            trainer.log.info(f"loss curve: {plot_loss_curve(trainer.log.log_dir)}")
        except (FileNotFoundError, ValueError, ImportError) as e:
            trainer.log.warning(f"no loss curve written: {e}")
