"""Turn the builder's bare GPTModel chunks into what megatron-core's schedules and optimizer expect.

Per chunk: Float16Module for bf16/fp16 (params in half precision, fp32 master copies in the
optimizer), then megatron-core DistributedDataParallel (contiguous grad buffers, bucketed
all-reduce or reduce-scatter for the distributed optimizer). The shared TransformerConfig is told
that losses come as (sum, count): DDP then leaves the gradient unscaled and finalize_model_grads
divides by the global token count, so every layout averages exactly like one process.
"""
from __future__ import annotations

from typing import Callable, Optional

from megactllm.config import Config


def wrap_model_chunks(cfg: Config, chunks: list) -> list:
    """DDP(Float16Module(chunk)) per virtual stage; grads reduced in fp32."""
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
    )
    from megatron.core.transformer.module import Float16Module

    config = chunks[0].config
    config.calculate_per_token_loss = True
    p = cfg.parallel
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=p.overlap_grad_reduce,
        overlap_param_gather=p.overlap_param_gather and p.use_distributed_optimizer,
        use_distributed_optimizer=p.use_distributed_optimizer,
        # Non-finite values are handled by the loop (skip and count), not by an exception here.
        check_for_nan_in_grad=False,
        average_in_collective=False,
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        module = Float16Module(config, chunk) if (config.bf16 or config.fp16) else chunk
        wrapped.append(
            DistributedDataParallel(
                config=config,
                ddp_config=ddp_config,
                module=module,
                # Only the first chunk's buckets overlap with compute (megatron's convention for VPP).
                disable_bucketing=i > 0,
            )
        )
    return wrapped


def unwrap(chunks: list) -> list:
    """The GPTModel inside each DDP/Float16Module wrapper (for state dicts and checkpoints)."""
    from megatron.core.utils import unwrap_model

    return unwrap_model(chunks)


def install_schedule_hooks(cfg: Config, model: list, optimizer, before_grad_sync: Optional[Callable[[], None]] = None) -> None:
    """Point the shared TransformerConfig at DDP's sync hooks and the optimizer's loss scaler.

    `before_grad_sync()` runs when the schedule has finished this rank's forward and backward work
    of a step and calls finalize_model_grads, whose gradient all-reduce waits for the other ranks.
    """
    from megatron.core.distributed import finalize_model_grads

    config = model[0].config
    if before_grad_sync is None:
        config.finalize_model_grads_func = finalize_model_grads
    else:
        def finalize_after_hook(*args, **kwargs):
            before_grad_sync()
            return finalize_model_grads(*args, **kwargs)

        config.finalize_model_grads_func = finalize_after_hook
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = [m.no_sync for m in model] if len(model) > 1 else model[0].no_sync
    if cfg.parallel.overlap_grad_reduce:
        config.grad_sync_func = [m.start_grad_sync for m in model] if len(model) > 1 else model[0].start_grad_sync
    if cfg.parallel.overlap_param_gather and cfg.parallel.use_distributed_optimizer:
        config.param_sync_func = [m.start_param_sync for m in model] if len(model) > 1 else model[0].start_param_sync
