"""The training loop's concerns, one callback each (OLMo-core's train/callbacks/ is the model).

`default_callbacks(trainer)` is the set a run gets: only the concerns its recipe switches on. The
order their hooks run in is each callback's declared `priority` (base.py says what each band is
for); the loop prints it once at the start. Each callback saves its own state in the checkpoint
under its `name`.
"""
from __future__ import annotations

from megactllm.training.callbacks.base import Callback, CallbackList, Step
from megactllm.training.callbacks.blend import BlendAnnouncements
from megactllm.training.callbacks.checkpointing import Checkpointing
from megactllm.training.callbacks.exit_conditions import ExitConditions
from megactllm.training.callbacks.expert_load import ExpertLoad
from megactllm.training.callbacks.inloop_eval import InLoopEvaluation
from megactllm.training.callbacks.loss_plot import LossPlot
from megactllm.training.callbacks.nonfinite import NonFiniteStop
from megactllm.training.callbacks.lock_holder import RunLockHolder
from megactllm.training.callbacks.skip_data import SkipDataWindows
from megactllm.training.callbacks.spikes import SpikeSkipping
from megactllm.training.callbacks.stragglers import StragglerReport
from megactllm.training.callbacks.throughput import ThroughputLogger
from megactllm.training.callbacks.validation import Validation
from megactllm.training.callbacks.wandb_logging import WandbLogging, wandb_callback

__all__ = [
    "BlendAnnouncements", "Callback", "CallbackList", "Checkpointing", "ExitConditions", "ExpertLoad", "InLoopEvaluation",
    "LossPlot", "NonFiniteStop", "RunLockHolder", "SkipDataWindows", "SpikeSkipping", "Step", "StragglerReport",
    "ThroughputLogger", "Validation", "WandbLogging", "default_callbacks",
]


def default_callbacks(trainer) -> list[Callback]:
    """The callbacks of a run of trainer.cfg; only the concerns its recipe switches on."""
    cfg, s, ckpt, run = trainer.cfg, trainer.cfg.stability, trainer.cfg.checkpoint, trainer.cfg.run
    callbacks: list[Callback] = [SkipDataWindows(s.skip_samples), NonFiniteStop(s.max_consecutive_nonfinite)]
    if trainer.blend_schedule is not None:
        callbacks.append(BlendAnnouncements(trainer.blend_schedule))
    if s.skip_spiky_steps:
        callbacks.append(SpikeSkipping(s))
    if trainer.world_size > 1:
        callbacks.append(StragglerReport(cfg.logging.interval, cfg.logging.straggler_ratio))
    if cfg.model.is_moe:
        callbacks.append(ExpertLoad(cfg, cfg.logging.interval))
    callbacks.append(ThroughputLogger(cfg, trainer.world_size, trainer.blend_schedule))
    if trainer.valid_reader is not None and cfg.validation.interval:
        callbacks.append(Validation(cfg.validation.interval, trainer.task.provides.perplexity))
    if cfg.eval.interval:  # in-loop benchmark accuracy (megactllm.eval.inloop)
        from megactllm.eval.inloop import InLoopEvaluator

        callbacks.append(InLoopEvaluation(InLoopEvaluator(cfg.eval, trainer.model, cfg.model, trainer.tokenizer)))
    if ckpt.save:
        callbacks.append(RunLockHolder(ckpt.save, run.lock_stale_minutes * 60))
    wandb = wandb_callback(cfg, trainer.rank)
    if wandb is not None:
        callbacks.append(wandb)
    callbacks += [
        Checkpointing(ckpt.save, ckpt.interval),
        ExitConditions(run.exit_interval, run.exit_duration_minutes, saving=bool(ckpt.save)),
        LossPlot(),
    ]
    return callbacks
