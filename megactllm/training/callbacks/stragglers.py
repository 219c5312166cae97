"""The straggler report (world > 1): which rank is slow, every logging.interval.

Wall time per step is the same on every rank (collectives make the fast ones wait), so each rank
times its own part: from the start of the step to its arrival at the gradient synchronisation
(the trainer's grad-sync hook, before megatron's finalize_model_grads), i.e. reading data plus
forward and backward before any wait for other data-parallel ranks. With pipeline parallelism
that time includes the pipeline's own waits. Each log interval the ranks all-gather their mean and the record gets
step_time_slowest_rank (seconds), slowest_rank, step_time_median and
step_time_slowest_over_median; rank 0 warns when the ratio stays above logging.straggler_ratio
(two reports in a row).
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist

from megactllm.training.callbacks.base import PRIORITY_NOTES, Callback, Step


class StragglerReport(Callback):
    name = "stragglers"
    priority = PRIORITY_NOTES

    def __init__(self, log_interval: int, ratio: float):
        self.log_interval = log_interval
        self.ratio = ratio
        self.step_start = None
        self.busy_seconds = 0.0
        self.steps = 0
        self.over_in_a_row = 0

    def on_train_start(self, trainer) -> None:
        trainer.add_grad_sync_hook(self._arrived_at_grad_sync)

    def _arrived_at_grad_sync(self) -> None:
        if self.step_start is not None:  # first arrival this step: this rank's own work is done
            self.busy_seconds += time.perf_counter() - self.step_start
            self.steps += 1
            self.step_start = None

    def on_step_start(self, trainer) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.step_start = time.perf_counter()

    def on_step_end(self, trainer, step: Step) -> None:
        if step.iteration % self.log_interval and step.iteration != trainer.train_iters:
            return
        mine = torch.tensor([self.busy_seconds / max(self.steps, 1)], dtype=torch.float64, device=trainer.device)
        gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, mine)
        times = torch.cat(gathered)
        self.busy_seconds, self.steps = 0.0, 0
        slowest = int(torch.argmax(times))
        median = float(times.median())
        ratio = float(times[slowest]) / median if median > 0 else 1.0
        step.notes.update({
            "step_time_slowest_rank": float(times[slowest]),
            "slowest_rank": slowest,
            "step_time_median": median,
            "step_time_slowest_over_median": ratio,
        })
        self.over_in_a_row = self.over_in_a_row + 1 if ratio > self.ratio else 0
        if self.over_in_a_row >= 2:
            trainer.log.warning(
                f"straggler: rank {slowest} took {float(times[slowest]):.3f}s per step to reach the gradient sync, "
                f"{ratio:.2f}x the median {median:.3f}s, for {self.over_in_a_row} reports in a row "
                f"(logging.straggler_ratio={self.ratio})"
            )

    # The reports in a row over the ratio are the same on every rank (from the gathered times): a
    # resumed run warns as the uninterrupted one would. The per-rank timings of a partial log
    # interval are not kept (the checkpoint holds one state for all ranks): the report after a
    # resume averages the steps since.
    def state_dict(self) -> dict:
        return {"over_in_a_row": self.over_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.over_in_a_row = int(state.get("over_in_a_row", 0))
