"""The one training loop every stage (pretrain, sft, dpo) runs, on any TP/PP/VPP/DP layout.

    result = run_training(cfg)            # after megactllm.parallel.initialize_parallel

Per iteration: read this data-parallel rank's micro-batches, let the Task prepare them, run
megatron-core's forward/backward schedule (no pipelining, 1F1B or interleaved), reduce the
Task's (sum, count) reports globally, take a guarded optimizer step (skipped and counted on a
non-finite loss or grad norm), advance the LR schedule, then log, evaluate and checkpoint on
their intervals. A run resumes from `train.load` (model, optimizer, scheduler, counters, RNG)
or starts from `train.pretrained_checkpoint` (weights only).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from megactllm.config import Config
from megactllm.data.pretrain.blend_schedule import check_resumed_schedule
from megactllm.checkpoint import save_load as ckpt
from megactllm.training import run_lock
from megactllm.training.exit_signals import ExitWatch
from megactllm.checkpoint.async_save import AsyncCheckpointSaver
from megactllm.training.batches import GlobalBatchReader
from megactllm.training.metrics import (
    RunLogger,
    device_peak_tflops,
    peak_memory_gib,
    perplexity,
    plot_loss_curve,
    throughput,
)
from megactllm.training.model_setup import install_schedule_hooks, wrap_model_chunks
from megactllm.training.nonfinite import NonFiniteGuard
from megactllm.training.optimizer import build_optimizer, guarded_step
from megactllm.training.rng import capture_rng_state, restore_rng_state
from megactllm.training.schedule import (
    build_lr_scheduler,
    num_microbatches,
    resolve_train_iters,
)


@dataclass
class TrainState:
    """Counters saved in every checkpoint and restored on resume."""

    iteration: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0
    skipped_iterations: int = 0
    nonfinite_iterations: int = 0
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


class Trainer:
    """Holds the built pieces of a run; `fit()` runs it."""

    def __init__(self, cfg: Config, task=None, use_transformer_engine: Optional[bool] = None):
        from megatron.core import parallel_state as ps

        from megactllm.model import build_model
        from megactllm.parallel import default_device
        from megactllm.training.stages import build_task

        from megactllm.parallel.initialize import check_context_parallel

        check_context_parallel(cfg.parallel, cfg.model.seq_length)
        self.cfg = cfg
        self.task = task if task is not None else build_task(cfg)
        self.device = default_device()
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.dp_rank = ps.get_data_parallel_rank()
        self.dp_size = ps.get_data_parallel_world_size()
        self.is_last_stage = ps.is_pipeline_last_stage(ignore_virtual=True)
        self.tokenizer, self.tokenizer_path = self._load_tokenizer()
        self.log = RunLogger(self._log_dir(), cfg.train.tensorboard_dir, enabled=self.rank == 0)

        # use_transformer_engine None: TE's layer spec when it imports on CUDA (the bench compares both).
        self.model = wrap_model_chunks(cfg, build_model(cfg.model, cfg.parallel, cfg.optim, use_transformer_engine))
        self.optimizer = build_optimizer(cfg, self.model)
        install_schedule_hooks(cfg, self.model, self.optimizer)

        self.train_ds, self.valid_ds, _ = self.task.build_datasets(cfg, self.tokenizer)
        if self.train_ds is None:
            raise ValueError(f"stage {cfg.train.stage!r} built no training dataset; check the data section")
        # An epoch-wrapped dataset's length already spans all epochs; the schedule counts one epoch.
        self.train_iters = resolve_train_iters(cfg, getattr(self.train_ds, "samples_per_epoch", len(self.train_ds)))
        self.scheduler = build_lr_scheduler(cfg, self.optimizer, self.train_iters)
        self.num_microbatches = num_microbatches(cfg, self.dp_size)
        # DPO feeds chosen and rejected rows together: the schedule's micro-batch is that much taller.
        self.schedule_micro_batch = cfg.train.micro_batch_size * getattr(self.task, "sequences_per_sample", 1)
        collate = getattr(self.task, "collate", None)
        self.train_reader = GlobalBatchReader(
            self.train_ds, cfg.train.global_batch_size, cfg.train.micro_batch_size,
            self.dp_rank, self.dp_size, self.device, collate, "train",
        )
        self.valid_reader = None
        if self.valid_ds is not None and len(self.valid_ds) and cfg.train.eval_iters:
            self.valid_reader = GlobalBatchReader(
                self.valid_ds, cfg.train.global_batch_size, cfg.train.micro_batch_size,
                self.dp_rank, self.dp_size, self.device, collate, "valid", wrap=True,
            )
        self.metric_names = list(self.task.metric_names())
        self.blend_schedule = getattr(self.train_ds, "schedule", None)
        if cfg.data.blend_schedule and self.blend_schedule is None:
            raise ValueError(f"data.blend_schedule is read by stage pretrain only; stage {cfg.train.stage!r} ignores it: remove it")
        self.state = TrainState(blend_schedule=self.blend_schedule.spec() if self.blend_schedule else None)
        self.guard = NonFiniteGuard(cfg.train.max_consecutive_nonfinite)
        self.peak_tflops = device_peak_tflops(cfg.train.peak_tflops)
        self.last_checkpoint: Optional[str] = None
        self.resumed_from: Optional[str] = None
        self.benchmarks = None
        if cfg.eval.interval:  # in-loop benchmark accuracy (megactllm.eval.inloop)
            from megactllm.eval.inloop import InLoopEvaluator

            self.benchmarks = InLoopEvaluator(cfg.eval, self.model, cfg.model, self.tokenizer)
        self.async_saver = AsyncCheckpointSaver() if cfg.train.async_save else None

    # ----------------------------------------------------------------- setup helpers
    def _load_tokenizer(self):
        d = self.cfg.data
        if not d.tokenizer_model:
            return None, None
        from megactllm.tokenizer import load_tokenizer

        tok = load_tokenizer(d.tokenizer_type, d.tokenizer_model)
        if tok.vocab_size > self.cfg.model.vocab_size:
            raise ValueError(
                f"tokenizer {d.tokenizer_model} has {tok.vocab_size} pieces but model.vocab_size is "
                f"{self.cfg.model.vocab_size}: set model.vocab_size={tok.vocab_size}"
            )
        return tok, d.tokenizer_model

    def _log_dir(self) -> str:
        t = self.cfg.train
        return t.log_dir or t.save or t.tensorboard_dir or "runs/latest"

    # ----------------------------------------------------------------- checkpoints
    def resume_or_initialise(self) -> None:
        t = self.cfg.train
        if t.load and _has_checkpoint(t.load):
            self._resume(t.load)
        elif t.pretrained_checkpoint:
            meta = ckpt.load_model_weights(t.pretrained_checkpoint, self.model, self.cfg.model)
            self.log.info(f"initialised weights from {meta.path} (iteration {meta.iteration}); fresh optimizer and schedule")
            # Float16Module keeps no separate copy, but the optimizer's fp32 master weights must follow.
            self._reload_master_weights()

    def _reload_master_weights(self) -> None:
        reload = getattr(self.optimizer, "reload_model_params", None)
        if reload is not None:
            reload()

    def _resume(self, path: str) -> None:
        meta = ckpt.read_metadata(path)
        same = ckpt.same_layout(meta, self.cfg.parallel, self.world_size)
        loadable, why_not = ckpt.optimizer_loadable(meta, self.cfg.parallel)
        # A data-parallel change is routine (megatron reshards over DP); a TP/PP change is opt-in.
        # (A CP change splits no weight: with optimizer state loadable it loads like a DP change.)
        tp_pp_changed = not ckpt.same_weight_split(meta, self.cfg.parallel)
        load_optimizer = loadable and (not tp_pp_changed or self.cfg.train.reshard_optimizer)
        if not load_optimizer:
            if loadable:
                why_not = "the TP/PP layout changed and train.reshard_optimizer is false"
            self.log.warning(
                f"{meta.path} was written at {_layout_text(meta.parallel, meta.world_size)}; this run is "
                f"{_layout_text(asdict(self.cfg.parallel), self.world_size)}. Model weights, LR schedule and counters are "
                f"loaded, but the optimizer state is NOT: {why_not}. Adam moments start from zero."
            )
        if load_optimizer:
            _, state = ckpt.load_checkpoint(path, self.model, self.optimizer, self.scheduler, self.cfg.model)
        else:
            _, state = ckpt.load_checkpoint(path, self.model, None, self.scheduler, self.cfg.model)
            self._reload_master_weights()
        known = {f for f in TrainState.__dataclass_fields__}
        current_schedule = self.state.blend_schedule
        check_resumed_schedule(
            state.get("blend_schedule"), current_schedule, self.cfg.data.allow_blend_schedule_change, str(meta.path), self.log.warning
        )
        self.state = TrainState(**{k: v for k, v in state.items() if k in known})
        self.state.blend_schedule = current_schedule
        rng = ckpt.load_rng_state(meta) if same else None
        if rng is not None:
            restore_rng_state(rng)
        else:
            self.log.warning(f"RNG state of {meta.path} not restored (other layout or none saved): random streams differ")
        self.last_checkpoint = str(meta.path)
        self.resumed_from = str(meta.path)
        self.log.info(
            f"resumed from {meta.path}: iteration {self.state.iteration}, {self.state.consumed_samples} samples, "
            f"{self.state.skipped_iterations} skipped"
        )

    def _publish_async_save(self, blocking: bool) -> None:
        published = self.async_saver.poll(blocking) if self.async_saver is not None else None
        if published is not None:
            self.last_checkpoint = published
            self.log.info(f"saved checkpoint {published} (written in the background)")

    def save(self) -> None:
        self._publish_async_save(blocking=True)  # one save in flight at a time
        path = ckpt.save_checkpoint(
            self.cfg.train.save,
            self.state.iteration,
            self.model,
            self.cfg,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            train_state=asdict(self.state),
            tokenizer_path=self.tokenizer_path,
            rng_state=capture_rng_state(),
            async_queue=self.async_saver.queue if self.async_saver is not None else None,
        )
        if self.async_saver is not None:
            self.async_saver.scheduled(path)
            return
        self.last_checkpoint = str(path)
        self.log.info(f"saved checkpoint {path}")

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
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        microbatches = self.train_reader.step(self.state.consumed_samples)
        microbatches = self.task.prepare_global_batch(microbatches, self.model)
        metrics = self._reduce_reports(self._forward_backward(microbatches, forward_only=False))
        loss = metrics[self.metric_names[0]]
        outcome = guarded_step(self.optimizer, self.cfg.optim.clip_grad, math.isfinite(loss))
        if outcome.updated:
            self.scheduler.step(increment=1)
        return metrics, outcome

    def evaluate(self) -> dict:
        for chunk in self.model:
            chunk.eval()
        totals: dict = {name: 0.0 for name in self.metric_names}
        with torch.no_grad():
            for i in range(self.cfg.train.eval_iters):
                mbs = self.valid_reader.step(i * self.cfg.train.global_batch_size)
                mbs = self.task.prepare_global_batch(mbs, self.model)
                for name, value in self._reduce_reports(self._forward_backward(mbs, forward_only=True)).items():
                    totals[name] += value / self.cfg.train.eval_iters
        for chunk in self.model:
            chunk.train()
        return totals

    # ----------------------------------------------------------------- the run
    def fit(self) -> TrainResult:
        cfg, t = self.cfg, self.cfg.train
        exit_watch = ExitWatch(t.exit_duration_minutes)
        self.resume_or_initialise()
        result = TrainResult(self.state, self.train_iters, resumed_from=self.resumed_from)
        seq = self.cfg.model.seq_length
        flops_per_token = cfg.model.flops_per_token(seq)
        self.log.info(
            f"training {cfg.train.stage}: {self.train_iters} iterations x {t.global_batch_size} samples x {seq} tokens; "
            f"TP={cfg.parallel.tensor_model_parallel_size} PP={cfg.parallel.pipeline_model_parallel_size} "
            f"VPP={cfg.parallel.virtual_pipeline_model_parallel_size or 1} CP={cfg.parallel.context_parallel_size} "
            f"DP={self.dp_size}, "
            f"{self.num_microbatches} micro-batches of {t.micro_batch_size} per step"
        )
        if self.blend_schedule is not None:
            self.log.info(self.blend_schedule.table())
        for chunk in self.model:
            chunk.train()
        window_start, window_tokens = time.perf_counter(), 0
        first_iteration = self.state.iteration
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        # One writer per checkpoint directory; every rank raises if rank 0 cannot take the lock.
        lock = run_lock.acquire_on_rank0(t.save, t.lock_stale_minutes * 60)
        try:
            while self.state.iteration < self.train_iters:
                if self.blend_schedule is not None:
                    note = self.blend_schedule.announcement(self.state.iteration + 1, self.state.iteration == first_iteration)
                    if note:
                        self.log.info(note)
                self._publish_async_save(blocking=False)
                metrics, outcome = self.train_step()
                s = self.state
                s.iteration += 1
                s.consumed_samples += t.global_batch_size
                # DPO feeds two rows (chosen, rejected) per sample: count every row the model processes.
                step_tokens = t.global_batch_size * seq * getattr(self.task, "sequences_per_sample", 1)
                s.consumed_tokens += step_tokens
                window_tokens += step_tokens
                loss = metrics[self.metric_names[0]]
                if not outcome.updated:
                    s.skipped_iterations += 1
                    nonfinite = outcome.skip_reason == "non-finite"
                    s.nonfinite_iterations += int(nonfinite)
                    self.log.warning(
                        f"iteration {s.iteration} skipped ({outcome.skip_reason}): loss {loss}, grad norm {outcome.grad_norm}"
                    )
                result.losses[s.iteration] = loss
                self.guard.record(s.iteration, outcome.skip_reason == "non-finite", self.last_checkpoint)

                if s.iteration % t.log_interval == 0 or s.iteration == self.train_iters:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    now = time.perf_counter()
                    tp = throughput(window_tokens, now - window_start, flops_per_token, self.world_size, self.peak_tflops)
                    self.log.train({
                        "iteration": s.iteration,
                        "train_iters": self.train_iters,
                        "consumed_tokens": s.consumed_tokens,
                        "loss": loss,
                        "loss_name": self.metric_names[0],
                        "metrics": metrics,
                        "lr": float(self.optimizer.param_groups[0]["lr"]),
                        "grad_norm": outcome.grad_norm,
                        "skipped_iterations": s.skipped_iterations,
                        "tokens_per_s": tp.tokens_per_s,
                        "tflops_per_device": tp.tflops_per_device,
                        "mfu": tp.mfu,
                        "peak_mem_gib": peak_memory_gib(),
                        **(self.blend_schedule.log_fields(s.iteration) if self.blend_schedule is not None else {}),
                    })
                    window_start, window_tokens = time.perf_counter(), 0

                paused = time.perf_counter()
                if self.valid_reader is not None and t.eval_interval and s.iteration % t.eval_interval == 0:
                    result.valid.append(self._log_validation())
                if self.benchmarks is not None and self.benchmarks.due(s.iteration):
                    self.log.benchmark({"iteration": s.iteration, "consumed_tokens": s.consumed_tokens,
                                        "metrics": self.benchmarks.run()})
                # No save while a non-finite streak runs: the last good checkpoint must stay the latest.
                if t.save and t.save_interval and s.iteration % t.save_interval == 0 and self.guard.in_a_row == 0:
                    self.save()
                # Evaluation and checkpoint time is not training throughput.
                window_start += time.perf_counter() - paused
                if t.exit_interval and s.iteration % t.exit_interval == 0 and s.iteration < self.train_iters:
                    self.log.info(f"exit_interval reached at iteration {s.iteration}")
                    break
                stop = exit_watch.check()  # the same answer on every rank
                if stop and s.iteration < self.train_iters:
                    saving = "with a checkpoint, to be resumed" if t.save else "WITHOUT a checkpoint (no train.save)"
                    self.log.warning(f"{stop}: stopping at iteration {s.iteration} {saving}")
                    result.stop_reason = stop
                    break

            finished = self.state.iteration >= self.train_iters
            if finished and self.valid_reader is not None and t.eval_interval and self.state.iteration % t.eval_interval:
                result.valid.append(self._log_validation())
            ran = self.state.iteration > first_iteration
            if ran and t.save and (not t.save_interval or self.state.iteration % t.save_interval) and self.guard.in_a_row == 0:
                self.save()
            self._publish_async_save(blocking=True)
            if result.stop_reason and dist.is_initialized():
                dist.barrier()  # no rank leaves (and ends its launcher) before rank 0 published the checkpoint
        finally:
            if lock is not None:
                lock.release()
            if self.rank == 0 and self.log.log_dir is not None:
                try:
                    self.log.info(f"loss curve: {plot_loss_curve(self.log.log_dir)}")
                except (FileNotFoundError, ValueError) as e:
                    self.log.warning(f"no loss curve written: {e}")
            self.log.close()
        result.state = self.state
        result.last_checkpoint = self.last_checkpoint
        return result

    def _log_validation(self) -> dict:
        metrics = self.evaluate()
        record = {
            "iteration": self.state.iteration,
            "consumed_tokens": self.state.consumed_tokens,
            "loss_name": self.metric_names[0],
            "metrics": metrics,
        }
        if self.metric_names[0] == "lm loss":  # perplexity means nothing for a DPO loss
            record["ppl"] = perplexity(metrics["lm loss"])
        self.log.validation(record)
        return record


def _has_checkpoint(path: str) -> bool:
    p = Path(path)
    return (p / ckpt.LATEST_FILE).is_file() or (p / ckpt.METADATA_FILE).is_file()


def _layout_text(parallel: dict, world_size) -> str:
    return (
        f"TP={parallel.get('tensor_model_parallel_size')} PP={parallel.get('pipeline_model_parallel_size')} "
        f"VPP={parallel.get('virtual_pipeline_model_parallel_size') or 1} world={world_size} "
        f"distributed_optimizer={parallel.get('use_distributed_optimizer')}"
    )


def run_training(cfg: Config, task=None) -> TrainResult:
    """Build everything for cfg on the already initialised process groups and train."""
    return Trainer(cfg, task).fit()
