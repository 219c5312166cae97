"""The hooks a training callback may implement, and the list that calls them in order.

`Trainer.fit` (megactllm.training.trainer) runs one iteration as:

    on_step_start            before the step reads its batch (blend announcements, async publishes)
    -- forward/backward, grad norm; veto_update(loss, grad_norm) may skip the update (spikes) --
    -- the optimizer step, then the loop's counters --
    on_step_end(step)        right after it (the non-finite guard, the log line and metrics.jsonl)
    on_evaluate              validation, in-loop benchmarks    } time here is not training
    on_save_boundary         the save policy                   } throughput (the loop pauses its clock)
    on_iteration_end         whether to stop now (exit interval, signals)

around the loop on_train_start / on_train_end (a run that finished or stopped cleanly) / on_close
(always, last: releases and reports). A callback that writes a checkpoint calls `before_save` of
every callback first (the run lock checks it still holds the directory) and asks `save_allowed`
(the non-finite guard keeps the last good checkpoint the latest). Every hook that runs a
collective runs it on every rank at the same point: the list calls each hook on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    from megactllm.training.trainer import Trainer


@dataclass
class Step:
    """What one iteration did, as the loop counted it."""

    iteration: int
    metrics: dict          # task metric -> global mean
    loss: float            # the first metric
    outcome: object        # megactllm.training.optimizer.StepOutcome: updated, skip_reason, grad_norm
    tokens: int            # rows x seq_length the model processed this step
    # Fields callbacks add to this step's log record (e.g. skipped_spike, the straggler report);
    # callbacks that fill it run before the ThroughputLogger that writes it.
    notes: dict = field(default_factory=dict)


class Callback:
    """Every hook is a no-op: a callback implements the ones its concern needs."""

    def on_train_start(self, trainer: "Trainer") -> None: ...
    def on_step_start(self, trainer: "Trainer") -> None: ...
    def veto_update(self, trainer: "Trainer", loss: float, grad_norm: float) -> Optional[str]: return None
    def on_step_end(self, trainer: "Trainer", step: Step) -> None: ...
    def on_evaluate(self, trainer: "Trainer") -> None: ...
    def on_save_boundary(self, trainer: "Trainer") -> None: ...
    def before_save(self, trainer: "Trainer") -> None: ...
    def save_allowed(self, trainer: "Trainer") -> bool: return True
    def on_iteration_end(self, trainer: "Trainer") -> None: ...
    def on_train_end(self, trainer: "Trainer") -> None: ...
    def on_close(self, trainer: "Trainer") -> None: ...


class CallbackList:
    """Calls a hook on each callback in order; `of(kind)` finds one (tests, benchmarks)."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = list(callbacks)

    def of(self, kind: type) -> Callback:
        for cb in self.callbacks:
            if isinstance(cb, kind):
                return cb
        raise KeyError(f"no {kind.__name__} among the trainer's callbacks")

    def call(self, hook: str, trainer: "Trainer", *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(trainer, *args)

    def close(self, trainer: "Trainer") -> None:
        """on_close on every callback even when one raises; the first error is raised after."""
        first = None
        for cb in self.callbacks:
            try:
                cb.on_close(trainer)
            except Exception as e:  # noqa: BLE001 - the others must still release what they hold
                first = first or e
        if first is not None:
            raise first

    def save_allowed(self, trainer: "Trainer") -> bool:
        return all(cb.save_allowed(trainer) for cb in self.callbacks)

    def veto_update(self, trainer: "Trainer", loss: float, grad_norm: float) -> Optional[str]:
        """The first callback's reason not to apply this step's update (asked on every rank), or None."""
        for cb in self.callbacks:
            reason = cb.veto_update(trainer, loss, grad_norm)
            if reason is not None:
                return reason
        return None
