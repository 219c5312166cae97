"""The loss-curve PNG beside metrics.jsonl, drawn by rank 0 when the run ends (even by an error)."""
from __future__ import annotations

from megactllm.training.callbacks.base import PRIORITY_REPORT, Callback
from megactllm.training.run.metrics import plot_loss_curve


class LossPlot(Callback):
    name = "loss_plot"
    priority = PRIORITY_REPORT

    def on_close(self, trainer) -> None:
        if trainer.rank != 0 or trainer.log.log_dir is None:
            return
        try:
            trainer.log.info(f"loss curve: {plot_loss_curve(trainer.log.log_dir)}")
        except (FileNotFoundError, ValueError, ImportError) as e:
            trainer.log.warning(f"no loss curve written: {e}")
