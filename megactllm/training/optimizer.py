"""megatron-core's optimizer for our chunks, and one guarded optimizer step.

`get_megatron_optimizer` gives Adam with fp32 master weights for bf16/fp16 params, a loss scaler for
fp16, and the distributed optimizer (states sharded over data-parallel ranks) when asked.

`guarded_step` splits megatron's `optimizer.step()` into its parts so that a non-finite loss or
gradient norm skips the update before any weight is touched: prepare grads (unscale, fp16 overflow
check) -> global grad norm -> decide -> clip by that norm -> step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from megactllm.config import Config
from megactllm.model.builder import params_dtype


def build_optimizer(cfg: Config, model: list):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    o = cfg.optim  # optim.optimizer is adam or sgd (the recipe's choice)
    config = OptimizerConfig(
        optimizer=o.optimizer,
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=o.bf16,
        fp16=o.fp16,
        params_dtype=params_dtype(o),
        loss_scale=o.loss_scale,
        initial_loss_scale=o.initial_loss_scale,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        overlap_param_gather=cfg.parallel.overlap_param_gather and cfg.parallel.use_distributed_optimizer,
    )
    return get_megatron_optimizer(config, model)


@dataclass
class StepOutcome:
    updated: bool
    grad_norm: Optional[float]
    # Why the update was skipped: None, "loss scale overflow" (fp16, expected now and then), "non-finite",
    # or a callback's veto (e.g. "spike: loss 11.2 > 7.9 ...").
    skip_reason: Optional[str] = None
    vetoed: bool = False


def _leaf_optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def guarded_step(optimizer, clip_grad: float, loss_is_finite: bool, veto: Optional[Callable] = None) -> StepOutcome:
    """One optimizer step that leaves the weights untouched on overflow or non-finite values.

    `veto(grad_norm)` (called on every rank once loss and grad norm are finite) returns a reason to
    skip this update, or None; it must return the same on every rank. A vetoed step leaves weights,
    Adam's moments and its step count as they were (the grads are simply not used).

    Every rank reaches the same decision: the loss is reduced globally before this call and the
    grad norm is reduced over the model-parallel (and, for the distributed optimizer, data-parallel)
    ranks inside megatron.
    """
    import torch
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    with torch.no_grad():
        if optimizer.prepare_grads():
            return StepOutcome(False, None, "loss scale overflow")
        grad_norm = float(optimizer.get_grad_norm())
        if not loss_is_finite or not math.isfinite(grad_norm):
            return StepOutcome(False, grad_norm, "non-finite")
        reason = veto(grad_norm) if veto is not None else None
        if reason is not None:
            return StepOutcome(False, grad_norm, reason, vetoed=True)
        if clip_grad > 0:
            for leaf in _leaf_optimizers(optimizer):
                if getattr(leaf, "is_stub_optimizer", False):
                    continue
                params = leaf.get_parameters()
                if params:
                    clip_grad_by_total_norm_fp32(
                        params,
                        max_norm=clip_grad,
                        total_norm=grad_norm,
                        use_decoupled_grad=leaf.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8,
                    )
        updated = optimizer.step_with_ready_grads()
    return StepOutcome(bool(updated), grad_norm, None if updated else "optimizer refused")
