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


# Transformer Engine's context-parallel attention algorithms (parallel.cp_comm_type); the local
# spec's SDPA attention always all-gathers keys and values.
CP_COMM_TYPES = ("p2p", "a2a", "all_gather")
# megatron-core's token dispatchers that run on CPU (gloo) as on GPUs; "flex" needs DeepEP.
MOE_DISPATCHERS = ("alltoall", "allgather")


def check_layout(parallel: ParallelConfig, world_size: int, num_layers: int | None = None) -> int:
    """Validate that TP x PP x CP divides the world; returns the data-parallel size."""
    model_parallel = (
        parallel.tensor_model_parallel_size * parallel.pipeline_model_parallel_size * parallel.context_parallel_size
    )
    if world_size % model_parallel:
        raise ParallelLayoutError(
            f"world size {world_size} is not divisible by TP x PP x CP = "
            f"{parallel.tensor_model_parallel_size} x {parallel.pipeline_model_parallel_size} x "
            f"{parallel.context_parallel_size}; launch a multiple of {model_parallel} processes"
        )
    if parallel.cp_comm_type not in CP_COMM_TYPES:
        raise ParallelLayoutError(
            f"parallel.cp_comm_type={parallel.cp_comm_type!r}; choose one of {', '.join(CP_COMM_TYPES)}"
        )
    ep = parallel.expert_model_parallel_size
    etp = parallel.expert_tensor_parallel_size or parallel.tensor_model_parallel_size
    if ep < 1 or etp < 1:
        raise ParallelLayoutError(
            f"parallel.expert_model_parallel_size={ep} and expert_tensor_parallel_size={etp} must be 1 or more"
        )
    expert_parallel = ep * etp * parallel.pipeline_model_parallel_size
    if world_size % expert_parallel:
        raise ParallelLayoutError(
            f"world size {world_size} is not divisible by EP x expert TP x PP = {ep} x {etp} x "
            f"{parallel.pipeline_model_parallel_size}: the experts' ranks must tile each pipeline stage; "
            f"launch a multiple of {expert_parallel} processes or lower parallel.expert_model_parallel_size"
        )
    if parallel.moe_token_dispatcher_type not in MOE_DISPATCHERS:
        raise ParallelLayoutError(
            f"parallel.moe_token_dispatcher_type={parallel.moe_token_dispatcher_type!r}; choose one of "
            f"{', '.join(MOE_DISPATCHERS)}"
        )
    if parallel.sequence_parallel and parallel.tensor_model_parallel_size == 1:
        raise ParallelLayoutError("sequence_parallel needs tensor_model_parallel_size > 1")
    if num_layers is not None:
        stages = parallel.pipeline_model_parallel_size * (parallel.virtual_pipeline_model_parallel_size or 1)
        if num_layers % stages:
            raise ParallelLayoutError(
                f"{num_layers} layers cannot be split evenly over PP x VPP = {stages} pipeline stages"
            )
    return world_size // model_parallel


def check_context_parallel(parallel: ParallelConfig, seq_length: int) -> None:
    """megatron splits each sequence into 2 x CP equal chunks (rank i holds chunks i and 2CP-1-i)."""
    cp = parallel.context_parallel_size
    if cp < 1:
        raise ParallelLayoutError(f"parallel.context_parallel_size={cp}; it must be 1 or more")
    if cp > 1 and seq_length % (2 * cp):
        raise ParallelLayoutError(
            f"model.seq_length={seq_length} is not divisible by 2 x parallel.context_parallel_size = {2 * cp}: "
            f"context parallelism cuts each sequence into {2 * cp} equal chunks; pick a sequence length that "
            f"is a multiple of {2 * cp} or another context_parallel_size"
        )


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
