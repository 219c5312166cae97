#!/usr/bin/env python
"""One mixture-of-experts layer against a dense SwiGLU layer of the same active FLOPs, and the MoE
layer at EP1 vs EP2 and with the allgather vs the alltoall token dispatcher.

Qwen3-30B-A3B's widths (hidden 2048, expert width 768, top 8); fewer experts on CPU (--experts 16).
The dense reference is one SwiGLU MLP of width top-k x 768 = 6144: the FLOPs a token meets in the
MoE layer's experts. Each measurement is forward + backward of the layer alone (megatron-core's
MoELayer, SequentialMLP experts on CPU, grouped GEMM with TE on GPU) on --tokens tokens per rank;
at EP2 each of two processes holds half the experts and routes its own tokens (weak scaling: the
same work per rank, plus the dispatch). Prints the fastest step times and the ratios, not absolute
claims: MoE/dense (the price of routing, permutation and many small GEMMs), allgather/alltoall,
EP2/EP1 per dispatcher (the price of moving tokens between ranks).

    python bench/moe.py                       # CPU, gloo, 1 thread per rank
    python bench/moe.py --experts 128 --tokens 8192 --steps 10   # on GPUs (NCCL, TE when present)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _layer(kind: str, experts: int, dispatcher: str, ep: int):
    from megatron.core.transformer.spec_utils import build_module

    from megactllm.config import ModelConfig, ParallelConfig
    from megactllm.model.builder import build_transformer_config, layer_spec, moe_layer_spec, transformer_engine_available

    te = transformer_engine_available()
    common = dict(num_layers=1, hidden_size=2048, num_attention_heads=32, num_query_groups=4, kv_channels=128,
                  vocab_size=1024, qk_layernorm=True)
    if kind == "dense":
        model = ModelConfig(family="qwen3", ffn_hidden_size=8 * 768, **common)
        spec = layer_spec(te).submodules.mlp
    else:
        model = ModelConfig(family="qwen3_moe", ffn_hidden_size=6144, num_moe_experts=experts, moe_router_topk=8,
                            moe_ffn_hidden_size=768, moe_aux_loss_coeff=0.001, **common)
        spec = moe_layer_spec(model, layer_spec(te), te).submodules.mlp
    parallel = ParallelConfig(expert_model_parallel_size=ep, moe_token_dispatcher_type=dispatcher)
    config = build_transformer_config(model, parallel)
    kwargs = {"layer_number": 1} if kind == "moe" else {}
    layer = build_module(spec, config=config, **kwargs)
    return layer.cuda() if torch.cuda.is_available() else layer


def _time_layer(kind: str, experts: int, dispatcher: str, tokens: int, steps: int) -> list[float]:
    import torch.distributed as dist

    from megactllm.config import ParallelConfig
    from megactllm.parallel import destroy_parallel, initialize_parallel

    ep = int(os.environ.get("WORLD_SIZE", "1")) if kind == "moe" else 1
    initialize_parallel(ParallelConfig(expert_model_parallel_size=ep, moe_token_dispatcher_type=dispatcher))
    layer = _layer(kind, experts, dispatcher, ep)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(dist.get_rank())
    x = torch.randn(tokens, 1, 2048, generator=g).to(device).requires_grad_()
    times = []
    for step in range(steps + 1):  # the first is warm-up
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        out, _ = layer(x)
        out.float().pow(2).mean().backward()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dist.barrier()
        if step:
            times.append(time.perf_counter() - start)
    destroy_parallel()
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=512, help="tokens per rank")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    from megactllm.testing import run_distributed

    env = {"OMP_NUM_THREADS": "1"}
    runs = {
        "dense (same active FLOPs)": ("dense", "alltoall", 1),
        "MoE EP1 alltoall": ("moe", "alltoall", 1),
        "MoE EP1 allgather": ("moe", "allgather", 1),
        "MoE EP2 alltoall": ("moe", "alltoall", 2),
        "MoE EP2 allgather": ("moe", "allgather", 2),
    }
    median = {}
    for name, (kind, dispatcher, world) in runs.items():
        per_rank = run_distributed(_time_layer, world, kind, args.experts, dispatcher, args.tokens, args.steps,
                                   env=env, timeout=1800)
        median[name] = min(max(ts) for ts in zip(*per_rank))  # slowest rank per step; the fastest step (a shared machine adds noise, never removes it)
        print(f"{name:28s} {median[name] * 1e3:9.1f} ms per forward+backward ({args.tokens} tokens per rank)")
    d = median["dense (same active FLOPs)"]
    print(f"MoE EP1 alltoall / dense:   {median['MoE EP1 alltoall'] / d:.2f}x")
    print(f"EP1 allgather / alltoall:   {median['MoE EP1 allgather'] / median['MoE EP1 alltoall']:.2f}x")
    print(f"EP2 / EP1, alltoall:        {median['MoE EP2 alltoall'] / median['MoE EP1 alltoall']:.2f}x (same tokens per rank)")
    print(f"EP2 / EP1, allgather:       {median['MoE EP2 allgather'] / median['MoE EP1 allgather']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
