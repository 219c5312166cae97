"""The one training loop every stage (pretrain, sft, dpo) runs, on any TP/PP/VPP/DP layout.

    result = run_training(cfg)            # after megactllm.parallel.initialize_parallel

Per iteration: read this data-parallel rank's micro-batches, let the Task prepare them, run
megatron-core's forward/backward schedule (no pipelining, 1F1B or interleaved), reduce the
Task's (sum, count) reports globally, take a guarded optimizer step (skipped and counted on a
non-finite loss or grad norm) and advance the LR schedule. Everything else a run does (logging
and throughput, validation, in-loop benchmarks, when to save, the run lock, the non-finite guard,
spikes, exit signals, the loss plot) is a callback in megactllm.training.callbacks, called by
priority at the hooks named in callbacks/base.py. Callbacks act on the run only through the
methods below (request_stop, save_checkpoint, restore_checkpoint, skip_samples,
add_grad_sync_hook); each keeps its own state, saved in the checkpoint under its name. Where a
run starts is megactllm.training.resume.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist

from megactllm.checkpoint import Checkpointer
from megactllm.config import Config
from megactllm.errors import UserError
from megactllm.training import resume
from megactllm.training.batches import GlobalBatchReader
from megactllm.training.callbacks import CallbackList, Step, default_callbacks
from megactllm.training.run.metrics import RunLogger
from megactllm.training.model_setup import install_schedule_hooks, wrap_model_chunks
from megactllm.training.optimizer import build_optimizer, guarded_step
from megactllm.training.rng import capture_rng_state
from megactllm.training.schedule import build_lr_scheduler, num_microbatches, resolve_train_iters
from megactllm.training.stages.task import StageCapabilities


@dataclass
class TrainState:
    """The loop's own counters, saved in every checkpoint and restored on resume (each callback
    saves its own state beside them)."""

    iteration: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0
    skipped_iterations: int = 0
    nonfinite_iterations: int = 0
    spike_iterations: int = 0  # steps whose update a callback vetoed (spikes)
    # data.blend_schedule as written (None: a fixed blend); a resume under another one is refused.
    blend_schedule: Optional[list] = None


@dataclass
class TrainResult:
    state: TrainState
    train_iters: int
    # iteration -> globally averaged main loss (None for a skipped non-finite step's NaN)
    losses: dict = field(default_factory=dict)
    valid: list = field(default_factory=list)
    last_checkpoint: Optional[str] = None
    resumed_from: Optional[str] = None
    # Why the run stopped before train_iters to be resumed (a signal, exit_duration_minutes), else None.
    stop_reason: Optional[str] = None


class StageError(UserError, TypeError):
    pass


class Trainer:
    """Holds the built pieces of a run; `fit()` runs it."""

    def __init__(self, cfg: Config, task=None, use_transformer_engine: Optional[bool] = None, callbacks=None):
        from megatron.core import parallel_state as ps

        from megactllm.model import build_model
        from megactllm.parallel import default_device
        from megactllm.training.stages import build_task

        self.cfg = cfg
        self.task = task if task is not None else build_task(cfg)
        if not isinstance(getattr(self.task, "provides", None), StageCapabilities):
            raise StageError(
                f"stage {cfg.train.stage!r}: its task {type(self.task).__name__} must declare `provides = "
                f"StageCapabilities(...)` (megactllm.training.stages.task)"
            )
        caps = self.task.provides
        self.device = default_device()
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.dp_rank = ps.get_data_parallel_rank()
        self.dp_size = ps.get_data_parallel_world_size()
        self.is_last_stage = ps.is_pipeline_last_stage(ignore_virtual=True)
        self.tokenizer, self.tokenizer_path = self._load_tokenizer()
        self.log = RunLogger(self._log_dir(), cfg.logging.tensorboard_dir, enabled=self.rank == 0)

        # use_transformer_engine None: TE's layer spec when it imports on CUDA (the bench compares both).
        self.model = wrap_model_chunks(cfg, build_model(cfg.model, cfg.parallel, cfg.optim, use_transformer_engine))
        self.optimizer = build_optimizer(cfg, self.model)

        self.train_ds, self.valid_ds, _ = self.task.build_datasets(cfg, self.tokenizer)
        if self.train_ds is None:
            raise ValueError(f"stage {cfg.train.stage!r} built no training dataset; check the data section")
        # An epoch-wrapped dataset (SFT/DPO epochs) spans all epochs; the schedule counts one.
        self.train_iters = resolve_train_iters(cfg, getattr(self.train_ds, "samples_per_epoch", len(self.train_ds)))
        self.scheduler = build_lr_scheduler(cfg, self.optimizer, self.train_iters * caps.updates_per_batch)
        self.num_microbatches = num_microbatches(cfg, self.dp_size)
        self.schedule_micro_batch = cfg.train.micro_batch_size * caps.sequences_per_sample
        self.train_reader = GlobalBatchReader(
            self.train_ds, cfg.train.global_batch_size, cfg.train.micro_batch_size,
            self.dp_rank, self.dp_size, self.device, caps.collate, "train",
        )
        self.valid_reader = None
        if self.valid_ds is not None and len(self.valid_ds) and cfg.validation.iters:
            self.valid_reader = GlobalBatchReader(
                self.valid_ds, cfg.train.global_batch_size, cfg.train.micro_batch_size,
                self.dp_rank, self.dp_size, self.device, caps.collate, "valid", wrap=True,
            )
        self.metric_names = list(self.task.metric_names())
        self.blend_schedule = None
        if cfg.data.blend_schedule:  # the recipe allows a schedule with stage pretrain only
            self.blend_schedule = self.train_ds.schedule
        self.state = TrainState(blend_schedule=self.blend_schedule.spec() if self.blend_schedule else None)
        self.last_checkpoint: Optional[str] = None
        self.resumed_from: Optional[str] = None
        self.result: Optional[TrainResult] = None
        self.stop_requested = False
        self.paused_seconds = 0.0  # spent in evaluation and checkpoints: not training throughput
        self._grad_sync_hooks: list = []
        install_schedule_hooks(cfg, self.model, self.optimizer, before_grad_sync=self._before_grad_sync)
        # Background saves (checkpoint.async_save): one in flight, published once every rank wrote it.
        self._checkpointer = Checkpointer(cfg.checkpoint.save, async_save=cfg.checkpoint.async_save) if cfg.checkpoint.save else None
        if self._checkpointer is not None:
            self._checkpointer.warn = self.log.warning  # e.g. little room left for the next save
        self.callbacks = CallbackList(callbacks if callbacks is not None else default_callbacks(self))

    def _load_tokenizer(self):
        d = self.cfg.data
        if not d.tokenizer_model:
            return None, None
        from megactllm.tokenizer import load_tokenizer, tokenizer_file

        from megactllm.tokenizer.vocab_fit import fit_model_to_tokenizer

        tok = load_tokenizer(d.tokenizer_type, d.tokenizer_model)
        fit_model_to_tokenizer(self.cfg, tok)  # the preflight did it already under megactllm.train
        # The checkpoint copies the file (an HF directory's tokenizer.json, with its side files).
        return tok, tokenizer_file(d.tokenizer_type, d.tokenizer_model)

    def _log_dir(self) -> str:
        c = self.cfg
        return c.logging.dir or c.checkpoint.save or c.logging.tensorboard_dir or "runs/latest"

    # ----------------------------------------------------------------- what callbacks may ask of the loop
    def request_stop(self, reason: Optional[str]) -> None:
        """End the run after this iteration; a reason (a signal, the time budget) means "resume me"."""
        self.stop_requested = True
        if reason:
            self.result.stop_reason = reason

    def save_allowed(self) -> bool:
        """Whether every callback agrees to a checkpoint now (none while a non-finite or spike streak runs)."""
        return self.callbacks.save_allowed(self)

    def save_checkpoint(self) -> None:
        """Collective: write a checkpoint of the run now into checkpoint.save: model, optimizer, schedule,
        the loop's counters, RNG and every callback's state. With checkpoint.async_save it is written in
        the background and published later (publish_checkpoint)."""
        self.publish_checkpoint(blocking=True)  # one save in flight at a time
        self.callbacks.before_save(self)
        path = self._checkpointer.save(
            self.state.iteration,
            self.model,
            self.cfg,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            train_state=asdict(self.state),
            callbacks=self.callbacks.state_dict(),
            tokenizer_path=self.tokenizer_path,
            rng_state=capture_rng_state(),
        )
        if self._checkpointer.in_flight is not None:
            return
        self.last_checkpoint = str(path)
        self.log.info(f"saved checkpoint {path}")

    def publish_checkpoint(self, blocking: bool) -> None:
        """Collective: publish a finished background save (a no-op with none in flight); blocking waits for it."""
        if self._checkpointer is None or self._checkpointer.in_flight is None:
            return
        self.callbacks.before_save(self)  # publishing writes the directory's latest pointer
        published = self._checkpointer.poll(blocking)
        if published is not None:
            self.last_checkpoint = str(published)
            self.log.info(f"saved checkpoint {published} (written in the background)")

    def restore_checkpoint(self, path: str) -> None:
        """Collective: go back to the checkpoint at `path`: model, optimizer, schedule, the loop's
        counters, RNG and every callback's state (e.g. a spike rollback)."""
        self._adopt(resume.resume(self.cfg, self.model, self.optimizer, self.scheduler, self.world_size,
                                  self.state.blend_schedule, self.log, path))

    def skip_samples(self, start: int, end: int) -> None:
        """Never read the training samples [start, end) (the callback that skips data windows records it)."""
        self.callbacks.on_samples_skipped(self, start, end)

    def add_grad_sync_hook(self, hook: Callable[[], None]) -> None:
        """Call `hook()` on this rank when its forward/backward work of a step is done, before the
        gradient synchronisation waits for the other ranks (megatron-core's finalize_model_grads)."""
        self._grad_sync_hooks.append(hook)

    def _before_grad_sync(self) -> None:
        for hook in self._grad_sync_hooks:
            hook()

    # ----------------------------------------------------------------- where the run starts
    def resume_or_initialise(self) -> None:
        self._adopt(resume.start(self.cfg, self.model, self.optimizer, self.scheduler, self.world_size,
                                 self.state.blend_schedule, self.log))

    def _adopt(self, start: "resume.Resumed") -> None:
        if start.train_state is None:
            return
        known = set(TrainState.__dataclass_fields__)
        current_schedule = self.state.blend_schedule
        self.state = TrainState(**{k: v for k, v in start.train_state.items() if k in known})
        self.state.blend_schedule = current_schedule
        # A checkpoint written before callbacks saved their own state kept some in the train state.
        self.callbacks.load_state_dict(start.callbacks, start.train_state)
        self.last_checkpoint = self.resumed_from = start.checkpoint
        if self.result is not None:
            self.result.state = self.state
        s = self.state
        self.log.info(
            f"resumed from {start.checkpoint}: iteration {s.iteration}, {s.consumed_samples} samples, "
            f"{s.skipped_iterations} skipped"
        )

    # ----------------------------------------------------------------- one step
    def _forward_backward(self, microbatches: list, forward_only: bool) -> list:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        iterators = [iter(microbatches) for _ in self.model]
        return get_forward_backward_func()(
            forward_step_func=self.task.forward_step,
            data_iterator=iterators if len(self.model) > 1 else iterators[0],
            model=self.model if len(self.model) > 1 else self.model[0],
            num_microbatches=len(microbatches),
            seq_length=self.cfg.model.seq_length,
            micro_batch_size=self.schedule_micro_batch,
            forward_only=forward_only,
        )

    def _reduce_reports(self, reports: list) -> dict:
        """Task reports summed over micro-batches and DP ranks, known on every rank: name -> mean."""
        from megatron.core import parallel_state as ps

        totals = torch.zeros(len(self.metric_names), 2, dtype=torch.float64, device=self.device)
        if self.is_last_stage:
            for report in reports:
                for i, name in enumerate(self.metric_names):
                    if name in report:
                        totals[i] += report[name].detach().to(totals.device, torch.float64).reshape(2)
            dist.all_reduce(totals, group=ps.get_data_parallel_group(with_context_parallel=True))
        if ps.get_pipeline_model_parallel_world_size() > 1:
            dist.broadcast(totals, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group())
        return {
            name: (float(totals[i, 0] / totals[i, 1]) if totals[i, 1] > 0 else float("nan"))
            for i, name in enumerate(self.metric_names)
        }

    def train_step(self) -> tuple[dict, object]:
        microbatches = self.train_reader.step(self.state.consumed_samples)
        microbatches = self.task.prepare_global_batch(microbatches, self.model)
        # GRPO takes several optimizer steps on one rollout batch; the last one's metrics are the step's.
        for _ in range(self.task.provides.updates_per_batch):
            metrics, outcome = self._update(microbatches)
        return metrics, outcome

    def _update(self, microbatches: list) -> tuple[dict, object]:
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        metrics = self._reduce_reports(self._forward_backward(microbatches, forward_only=False))
        loss = metrics[self.metric_names[0]]
        # Callbacks may veto the update once the grad norm is known (spiky steps), before any weight moves.
        outcome = guarded_step(
            self.optimizer, self.cfg.optim.clip_grad, math.isfinite(loss),
            veto=lambda grad_norm: self.callbacks.veto_update(self, loss, grad_norm),
        )
        # A vetoed step is data that is not learnt from: the LR schedule goes on, as for an applied one.
        if outcome.updated or outcome.vetoed:
            self.scheduler.step(increment=1)
        return metrics, outcome

    def evaluate(self) -> dict:
        for chunk in self.model:
            chunk.eval()
        totals: dict = {name: 0.0 for name in self.metric_names}
        with torch.no_grad():
            for i in range(self.cfg.validation.iters):
                mbs = self.valid_reader.step(i * self.cfg.train.global_batch_size)
                mbs = self.task.prepare_global_batch(mbs, self.model)
                for name, value in self._reduce_reports(self._forward_backward(mbs, forward_only=True)).items():
                    totals[name] += value / self.cfg.validation.iters
        for chunk in self.model:
            chunk.train()
        return totals

    def _count(self, metrics: dict, outcome) -> Step:
        """Advance the counters by one step; a skipped step is counted and named."""
        t, s = self.cfg.train, self.state
        s.iteration += 1
        s.consumed_samples += t.global_batch_size
        # DPO feeds two rows (chosen, rejected) per sample: count every row the model processes.
        tokens = t.global_batch_size * self.cfg.model.seq_length * self.task.provides.sequences_per_sample
        s.consumed_tokens += tokens
        loss = metrics[self.metric_names[0]]
        if not outcome.updated:
            s.skipped_iterations += 1
            s.nonfinite_iterations += int(outcome.skip_reason == "non-finite")
            s.spike_iterations += int(outcome.vetoed)
            self.log.warning(f"iteration {s.iteration} skipped ({outcome.skip_reason}): loss {loss}, grad norm {outcome.grad_norm}")
        self.result.losses[s.iteration] = loss
        return Step(s.iteration, metrics, loss, outcome, tokens)

    # ----------------------------------------------------------------- the run
    def fit(self) -> TrainResult:
        cfg, t = self.cfg, self.cfg.train
        self.resume_or_initialise()
        self.result = TrainResult(self.state, self.train_iters, resumed_from=self.resumed_from)
        self.log.info(
            f"training {t.stage}: {self.train_iters} iterations x {t.global_batch_size} samples x {cfg.model.seq_length} tokens; "
            f"TP={cfg.parallel.tensor_model_parallel_size} PP={cfg.parallel.pipeline_model_parallel_size} "
            f"VPP={cfg.parallel.virtual_pipeline_model_parallel_size or 1} CP={cfg.parallel.context_parallel_size} "
            f"DP={self.dp_size}, "
            f"{self.num_microbatches} micro-batches of {t.micro_batch_size} per step"
        )
        self.log.info(f"callbacks, in order: {self.callbacks.order()}")
        for chunk in self.model:
            chunk.train()
        cb = self.callbacks
        try:
            cb.on_train_start(self)  # the run lock first: a refused run starts no other callback
            while self.state.iteration < self.train_iters and not self.stop_requested:
                cb.on_step_start(self)
                step = self._count(*self.train_step())
                cb.on_step_end(self, step)
                paused = time.perf_counter()
                cb.on_evaluate(self)
                cb.on_save_boundary(self)
                self.paused_seconds += time.perf_counter() - paused
                cb.on_iteration_end(self)
            cb.on_train_end(self)
        except BaseException as e:
            cb.on_error(self, e)
            raise
        finally:
            try:
                self.callbacks.close(self)
            finally:
                self.log.close()
        self.result.state = self.state
        self.result.last_checkpoint = self.last_checkpoint
        return self.result


def run_training(cfg: Config, task=None) -> TrainResult:
    """Build everything for cfg on the already initialised process groups and train."""
    return Trainer(cfg, task).fit()
