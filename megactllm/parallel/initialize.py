"""Bring up torch.distributed and megatron-core's process groups for a ParallelConfig.

On a GPU machine this is NCCL with one device per local rank; without CUDA it is gloo with the
CPU compatibility layer switched on, so the same TP/PP/DP code runs on CPU processes.
"""
from __future__ import annotations

import datetime
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from megactllm.config import ParallelConfig
from megactllm.parallel.cpu_compat import enable_cpu_compat, moe_te_general_gemm_shim
from megactllm.parallel.environment import LaunchEnvironment, detect_launch_environment
from megactllm.errors import UserError


class ParallelLayoutError(UserError, ValueError):
    pass


def check_layout(parallel: ParallelConfig, world_size: int, num_layers: int | None = None) -> int:
    """Validate that TP x PP x CP divides the world; returns the data-parallel size. The rest of the
    layout (sequence parallel, CP chunks, heads over TP) the recipe checks (megactllm.config)."""
    model_parallel = (
        parallel.tensor_model_parallel_size * parallel.pipeline_model_parallel_size * parallel.context_parallel_size
    )
    if world_size % model_parallel:
        raise ParallelLayoutError(
            f"world size {world_size} is not divisible by TP x PP x CP = "
            f"{parallel.tensor_model_parallel_size} x {parallel.pipeline_model_parallel_size} x "
            f"{parallel.context_parallel_size}; launch a multiple of {model_parallel} processes"
        )
    # Experts: their ranks (EP x expert TP) must tile each pipeline stage of the world.
    ep = parallel.expert_model_parallel_size
    etp = parallel.expert_tensor_parallel_size or parallel.tensor_model_parallel_size
    expert_parallel = ep * etp * parallel.pipeline_model_parallel_size
    if world_size % expert_parallel:
        raise ParallelLayoutError(
            f"world size {world_size} is not divisible by EP x expert TP x PP = {ep} x {etp} x "
            f"{parallel.pipeline_model_parallel_size}: the experts' ranks must tile each pipeline stage; "
            f"launch a multiple of {expert_parallel} processes or lower parallel.expert_model_parallel_size"
        )
    if num_layers is not None:  # a layout given outside a recipe (evaluation, conversion)
        parallel.check_layers(num_layers)
    return world_size // model_parallel


def set_random_seed(seed: int) -> None:
    """Same seed on every rank for data order; megatron's tracker gives TP ranks their own stream."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def initialize_parallel(parallel: ParallelConfig, seed: int = 1234, num_layers: int | None = None) -> LaunchEnvironment:
    """Initialise torch.distributed (if needed) and megatron's model-parallel groups."""
    from megatron.core import parallel_state

    env = detect_launch_environment()
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    else:
        enable_cpu_compat()
    check_layout(parallel, env.world_size, num_layers)

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        backend = parallel.distributed_backend or ("nccl" if use_cuda else "gloo")
        dist.init_process_group(
            backend=backend,
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(minutes=parallel.distributed_timeout_minutes),
        )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        expert_model_parallel_size=parallel.expert_model_parallel_size,
        expert_tensor_parallel_size=parallel.expert_tensor_parallel_size,
    )
    moe_te_general_gemm_shim()  # without Transformer Engine, GPU or not
    set_random_seed(seed)
    return env


def destroy_parallel() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
