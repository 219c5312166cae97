"""What a training callback is: its hooks, its priority, its own saved state; and the ordered list.

`Trainer.fit` (megactllm.training.trainer) runs one iteration as:

    on_step_start            before the step reads its batch (skip windows, blend announcements)
    -- forward/backward, grad norm; veto_update(loss, grad_norm) may skip the update (spikes) --
    -- the optimizer step, then the loop's counters --
    on_step_end(step)        right after it (the non-finite guard, the log line and metrics.jsonl)
    on_evaluate              validation, in-loop benchmarks    } time here is not training
    on_save_boundary         the save policy                   } throughput (the loop pauses its clock)
    on_iteration_end         whether to stop now (exit interval, signals, a spike rollback)

Around the loop: on_train_start (after the run's starting point is loaded, callbacks' states
included); on_train_end when the run finished or stopped cleanly; on_error(exc) when anything
raised (the exception is raised on after it); on_close always, last, to release what a callback
holds. So W&B finishes a run as failed or not, and the run lock is released, without flags.

Before any checkpoint write the loop calls `before_save` of every callback (the run lock checks
it still holds the directory) and saves only when every `save_allowed` (the non-finite guard
keeps the last good checkpoint the latest). `on_samples_skipped(start, end)` says a window of the
training order is never to be read (after a spike rollback). A callback acts on the run only
through the Trainer's own methods (request_stop, save_checkpoint, restore_checkpoint,
skip_samples, add_grad_sync_hook), never by reaching into other callbacks or rewriting the
trainer's attributes.

Order: every hook runs on the callbacks by descending `priority` (ties keep the list's order);
the loop prints the order once at the start. The bands below say why a callback sits where it
does. Every hook that runs a collective runs it on every rank at the same point.

State: `state_dict()` is saved in every checkpoint under the callback's `name` and given back to
`load_state_dict()` on resume (and on a rollback). `legacy_state(train_state)` reads what
checkpoints written before callbacks owned their state kept in the loop's train_state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Optional, Sequence

if TYPE_CHECKING:
    from megactllm.training.trainer import Trainer

# Higher runs first at every hook.
PRIORITY_LOCK = 100      # the run lock: taken before anything opens, so a refused run starts nothing
PRIORITY_DATA = 90       # move the data position before a step reads it; announce blend phases
PRIORITY_GUARD = 80      # stop a diverged run before its step is logged (non-finite)
PRIORITY_NOTES = 70      # add fields to the step's record: spikes, the straggler report
PRIORITY_LOG = 60        # write the step's record; W&B opens after the lock and before anything logs
PRIORITY_EVALUATE = 50   # validation, in-loop benchmarks (their end-of-run records precede the last save)
PRIORITY_SAVE = 40       # the save policy
PRIORITY_EXIT = 30       # whether to stop now (after this iteration's save)
PRIORITY_REPORT = 0      # after everything else: the loss plot


@dataclass
class Step:
    """What one iteration did, as the loop counted it."""

    iteration: int
    metrics: dict          # task metric -> global mean
    loss: float            # the first metric
    outcome: object        # megactllm.training.optimizer.StepOutcome: updated, skip_reason, grad_norm
    tokens: int            # rows x seq_length the model processed this step
    # Fields callbacks add to this step's log record (e.g. skipped_spike, the straggler report);
    # callbacks that fill it have a higher priority than the ThroughputLogger that writes it.
    notes: dict = field(default_factory=dict)


class Callback:
    """Every hook is a no-op: a callback implements the ones its concern needs."""

    # The key of its state in a checkpoint, one per callback in a run (default: the class's name).
    name: ClassVar[str] = "callback"
    priority: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    def on_train_start(self, trainer: "Trainer") -> None: ...
    def on_step_start(self, trainer: "Trainer") -> None: ...
    def veto_update(self, trainer: "Trainer", loss: float, grad_norm: float) -> Optional[str]: return None
    def on_step_end(self, trainer: "Trainer", step: Step) -> None: ...
    def on_evaluate(self, trainer: "Trainer") -> None: ...
    def on_save_boundary(self, trainer: "Trainer") -> None: ...
    def before_save(self, trainer: "Trainer") -> None: ...
    def save_allowed(self, trainer: "Trainer") -> bool: return True
    def on_samples_skipped(self, trainer: "Trainer", start: int, end: int) -> None: ...
    def on_iteration_end(self, trainer: "Trainer") -> None: ...
    def on_train_end(self, trainer: "Trainer") -> None: ...
    def on_error(self, trainer: "Trainer", exc: BaseException) -> None: ...
    def on_close(self, trainer: "Trainer") -> None: ...

    def state_dict(self) -> dict:
        """Plain JSON-able values this callback needs to go on exactly after a resume ({}: none)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Take a saved state; {} (none was saved) means the state of a fresh run."""

    def legacy_state(self, train_state: dict) -> Optional[dict]:
        """This callback's state from a checkpoint that kept it in the train state (None: nothing there)."""
        return None


def _by_priority(callbacks: Sequence[Callback]) -> list:
    ordered = sorted(callbacks, key=lambda cb: -cb.priority)  # stable: ties keep the given order
    names = [cb.name for cb in ordered]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"two callbacks are named {repeated}: each needs its own name for its saved state")
    return ordered


class CallbackList:
    """The run's callbacks by descending priority; one method per hook calls it on each in turn."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = _by_priority(callbacks)
        self._started: list = []  # whose on_train_start ran: only they are told how the run ended

    def __iter__(self):
        return iter(self.callbacks)

    def of(self, kind: type) -> Callback:
        """The callback of a type (the loop's own save; tests, benchmarks)."""
        for cb in self.callbacks:
            if isinstance(cb, kind):
                return cb
        raise KeyError(f"no {kind.__name__} among the trainer's callbacks")

    def order(self) -> str:
        return ", ".join(f"{cb.name} ({cb.priority})" for cb in self.callbacks)

    # ----------------------------------------------------------------- hooks
    def on_train_start(self, trainer: "Trainer") -> None:
        """on_train_start in order; a callback counts as started once its own returned."""
        self._started = []
        for cb in self.callbacks:
            cb.on_train_start(trainer)
            self._started.append(cb)

    def on_step_start(self, trainer: "Trainer") -> None:
        for cb in self.callbacks:
            cb.on_step_start(trainer)

    def veto_update(self, trainer: "Trainer", loss: float, grad_norm: float) -> Optional[str]:
        """The first callback's reason not to apply this step's update (asked on every rank), or None."""
        for cb in self.callbacks:
            reason = cb.veto_update(trainer, loss, grad_norm)
            if reason is not None:
                return reason
        return None

    def on_step_end(self, trainer: "Trainer", step: Step) -> None:
        for cb in self.callbacks:
            cb.on_step_end(trainer, step)

    def on_evaluate(self, trainer: "Trainer") -> None:
        for cb in self.callbacks:
            cb.on_evaluate(trainer)

    def on_save_boundary(self, trainer: "Trainer") -> None:
        for cb in self.callbacks:
            cb.on_save_boundary(trainer)

    def before_save(self, trainer: "Trainer") -> None:
        for cb in self.callbacks:
            cb.before_save(trainer)

    def save_allowed(self, trainer: "Trainer") -> bool:
        return all(cb.save_allowed(trainer) for cb in self.callbacks)

    def on_samples_skipped(self, trainer: "Trainer", start: int, end: int) -> None:
        for cb in self.callbacks:
            cb.on_samples_skipped(trainer, start, end)

    def on_iteration_end(self, trainer: "Trainer") -> None:
        for cb in self.callbacks:
            cb.on_iteration_end(trainer)

    def on_train_end(self, trainer: "Trainer") -> None:
        for cb in self.callbacks:
            cb.on_train_end(trainer)

    def on_error(self, trainer: "Trainer", exc: BaseException) -> None:
        """on_error on every started callback even when one raises (the run's own error goes on)."""
        for cb in self._started:
            try:
                cb.on_error(trainer, exc)
            except Exception as e:  # noqa: BLE001 - the others must still hear of it
                trainer.log.warning(f"callback {cb.name}: on_error raised {type(e).__name__}: {e}")

    def close(self, trainer: "Trainer") -> None:
        """on_close on every started callback even when one raises; the first error is raised after."""
        first = None
        for cb in self._started:
            try:
                cb.on_close(trainer)
            except Exception as e:  # noqa: BLE001 - the others must still release what they hold
                first = first or e
        self._started = []
        if first is not None:
            raise first

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """name -> state of every callback that has one (saved in the checkpoint)."""
        return {cb.name: state for cb in self.callbacks if (state := cb.state_dict())}

    def load_state_dict(self, saved: Optional[dict], train_state: Optional[dict] = None) -> None:
        """Give each callback its saved state; from an older checkpoint, what its train state held."""
        saved = saved or {}
        for cb in self.callbacks:
            state = saved.get(cb.name)
            if state is None and not saved and train_state:
                state = cb.legacy_state(train_state)
            cb.load_state_dict(state or {})  # none saved: the state of a fresh run
