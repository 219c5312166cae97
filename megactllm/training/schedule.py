"""How long a run lasts and how its learning rate moves.

Iterations come from `train.duration`: iterations, tokens (one iteration consumes
global_batch_size x seq_length tokens) or, for finite datasets (SFT/DPO), epochs. The LR schedule is megatron-core's OptimizerParamScheduler stepped once per
successful iteration: linear warmup from 0, then cosine, linear, constant or WSD decay to min_lr.
"""
from __future__ import annotations

import math
from typing import Optional

from megactllm.config import Config, ConfigError, check_warmup
from megactllm.errors import UserError


class ScheduleError(UserError, ValueError):
    pass


def resolve_train_iters(cfg: Config, train_samples: Optional[int] = None) -> int:
    """Number of optimizer steps of the run (train.duration; epochs need the training set's size)."""
    d = cfg.train.duration
    if d is None:
        raise ConfigError("train.duration=null: set it to '1000 iterations', '2B tokens' or (sft, dpo) '2 epochs'")
    iters = cfg.known_train_iters()
    if iters is not None:
        return iters
    if train_samples is None:
        raise ScheduleError(f"train.duration='{d}' needs a finite training set; give iterations or tokens")
    return max(1, math.ceil(d.value * train_samples / cfg.train.global_batch_size))


def num_microbatches(cfg: Config, data_parallel_size: int) -> int:
    t = cfg.train
    per_step = t.micro_batch_size * data_parallel_size
    if t.global_batch_size % per_step:
        raise ScheduleError(
            f"train.global_batch_size={t.global_batch_size} is not a multiple of micro_batch_size x data-parallel "
            f"size = {t.micro_batch_size} x {data_parallel_size}"
        )
    return t.global_batch_size // per_step


def dataset_sample_counts(cfg: Config, train_iters: int) -> tuple[int, int, int]:
    """Samples to draw from the train, valid and test splits (megatron sizes its indices by these).

    Every evaluation reads the same first eval_iters global batches of the valid split, so that
    successive validation losses are comparable.
    """
    gbs = cfg.train.global_batch_size
    eval_samples = cfg.validation.iters * gbs if cfg.validation.interval else 0
    return train_iters * gbs + skipped_sample_reserve(cfg), eval_samples, 0


def skipped_sample_reserve(cfg: Config) -> int:
    """Samples a run may pass over without training on them, so its dataset is built that much longer:
    the stability.skip_samples windows, and per allowed spike rollback at most the samples since the last
    save (saves wait while spikes run in a row, so save_interval + spike_rollback_after steps)."""
    from megactllm.training.callbacks.skip_data import parse_windows, window_samples

    s = cfg.stability
    reserve = window_samples(parse_windows(s.skip_samples))
    if s.skip_spiky_steps and s.spike_rollback_after:
        reserve += s.spike_max_rollbacks * ((cfg.checkpoint.interval or 0) + s.spike_rollback_after) * cfg.train.global_batch_size
    return reserve


def warmup_iters(cfg: Config, decay_iters: int) -> int:
    o = cfg.optim
    if o.lr_warmup_fraction is not None:
        return int(o.lr_warmup_fraction * decay_iters)
    return int(o.lr_warmup_iters)


def build_lr_scheduler(cfg: Config, optimizer, train_iters: int):
    """megatron-core OptimizerParamScheduler in units of iterations."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o = cfg.optim
    decay_iters = o.lr_decay_iters or train_iters
    warmup = warmup_iters(cfg, decay_iters)
    if cfg.known_train_iters() is None:  # epochs: the run's length is known now, from the dataset
        check_warmup(cfg, train_iters)
    style = o.lr_decay_style
    wsd_iters = None
    if style == "WSD":
        wsd_iters = o.lr_wsd_decay_iters or max(1, decay_iters // 10)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=decay_iters,
        lr_decay_style=style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=decay_iters,
        wd_incr_style="constant",
        # On resume the checkpoint's schedule wins over the recipe's (megatron's default).
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
        wsd_decay_steps=wsd_iters,
        lr_wsd_decay_style=o.lr_wsd_decay_style if style == "WSD" else None,
    )
