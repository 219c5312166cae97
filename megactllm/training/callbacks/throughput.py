"""The training log line and metrics.jsonl record every logging.interval: loss, LR, throughput, MFU.

Throughput counts the wall time of the iterations since the last line, less what the loop spent
in evaluation and checkpoints (its `paused_seconds`).
"""
from __future__ import annotations

import time

import torch

from megactllm.model.families import family_of
from megactllm.training.callbacks.base import PRIORITY_LOG, Callback, Step
from megactllm.training.run.metrics import device_peak_tflops, peak_memory_gib, throughput


class ThroughputLogger(Callback):
    name = "throughput"
    priority = PRIORITY_LOG

    def __init__(self, cfg, world_size: int, blend_schedule=None):
        self.log_interval = cfg.logging.interval
        self.flops_per_token = family_of(cfg.model).flops_per_token(cfg.model, cfg.model.seq_length)
        self.peak_tflops = device_peak_tflops(cfg.logging.peak_tflops)
        self.world_size = world_size
        self.blend_schedule = blend_schedule
        self.window_start, self.window_tokens, self.window_paused = 0.0, 0, 0.0

    def _open_window(self, trainer) -> None:
        self.window_start, self.window_tokens = time.perf_counter(), 0
        self.window_paused = trainer.paused_seconds

    def on_train_start(self, trainer) -> None:
        self._open_window(trainer)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, trainer, step: Step) -> None:
        self.window_tokens += step.tokens
        # A skipped spike is logged whatever the interval: it is the line a person looks for.
        if step.iteration % self.log_interval and step.iteration != trainer.train_iters and not step.notes.get("skipped_spike"):
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.window_start - (trainer.paused_seconds - self.window_paused)
        tp = throughput(self.window_tokens, seconds, self.flops_per_token, self.world_size, self.peak_tflops)
        s = trainer.state
        trainer.log.train({
            "iteration": s.iteration,
            "train_iters": trainer.train_iters,
            "consumed_tokens": s.consumed_tokens,
            "loss": step.loss,
            "loss_name": trainer.metric_names[0],
            "metrics": step.metrics,
            "lr": float(trainer.optimizer.param_groups[0]["lr"]),
            "grad_norm": step.outcome.grad_norm,
            "skipped_iterations": s.skipped_iterations,
            "tokens_per_s": tp.tokens_per_s,
            "tflops_per_device": tp.tflops_per_device,
            "mfu": tp.mfu,
            "peak_mem_gib": peak_memory_gib(),
            **(self.blend_schedule.log_fields(s.iteration) if self.blend_schedule is not None else {}),
            **step.notes,
        })
        self._open_window(trainer)
