#!/usr/bin/env python
"""Context parallelism on CPU: core attention step time and peak memory per rank, CP=2 against CP=1.

    python bench/context_parallel.py                 # seq 8192, 8 heads / 2 groups x 64, batch 1, fp32

Each layout runs on its own gloo processes (CP=1: one, CP=2: two, one thread each): the local
spec's SDPAttention, forward + backward, causal, on this rank's share of the sequence (CP=2: two
chunks of s/4, keys and values all-gathered, gradients reduce-scattered). Step time: min and median
of --steps steps after a warm-up, the slowest rank's; peak memory: the growth of each rank's peak
RSS (VmHWM) over its inputs. Ratios CP=2 / CP=1 are printed; lower is better. With two ranks on
a shared machine the time ratio includes their competition for cores and the gloo copies.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def rank_body(cp: int, seq: int, heads: int, groups: int, head_dim: int, batch: int, steps: int) -> dict:
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.utils import get_batch_on_this_cp_rank

    from megactllm.config import load_config
    from megactllm.model import build_transformer_config
    from megactllm.model.sdpa_attention import SDPAttention
    from megactllm.parallel import destroy_parallel, initialize_parallel

    cfg = load_config(None, [
        "model.arch=tiny", f"model.num_attention_heads={heads}", f"model.num_query_groups={groups}",
        f"model.hidden_size={heads * head_dim}", f"model.seq_length={seq}", f"parallel.context_parallel_size={cp}",
    ])
    initialize_parallel(cfg.parallel, seed=0)
    config = build_transformer_config(cfg.model, cfg.parallel, cfg.optim)
    module = SDPAttention(config=config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    g = torch.Generator().manual_seed(0)
    full = {n: torch.randn(batch, seq, h, head_dim, generator=g) for n, h in (("q", heads), ("k", groups), ("v", groups))}
    local = get_batch_on_this_cp_rank(full)
    q, k, v = (local[n].transpose(0, 1).contiguous().requires_grad_() for n in ("q", "k", "v"))
    del full, local
    base = _peak_rss_bytes()
    times = []
    for i in range(steps + 1):
        torch.distributed.barrier()
        start = time.perf_counter()
        module(q, k, v, None).square().mean().backward()
        torch.distributed.barrier()
        if i:
            times.append(time.perf_counter() - start)
        q.grad = k.grad = v.grad = None
    peak = _peak_rss_bytes() - base
    destroy_parallel()
    return {"times": times, "peak_bytes": peak}


def run(cp: int, args) -> dict:
    from megactllm.testing import run_distributed

    results = run_distributed(rank_body, cp, cp, args.seq, args.heads, args.groups, args.head_dim, args.batch,
                              args.steps, timeout=1800)
    slowest = [max(r["times"][i] for r in results) for i in range(args.steps)]
    return {"min": min(slowest), "median": statistics.median(slowest), "peak": max(r["peak_bytes"] for r in results)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    print(f"core attention fwd+bwd per rank, causal, seq {args.seq}, {args.heads} heads / {args.groups} kv groups x "
          f"{args.head_dim}, batch {args.batch}, fp32, cpu (1 thread per rank)")
    one, two = run(1, args), run(2, args)
    for name, r in (("CP=1", one), ("CP=2", two)):
        print(f"{name}: step min/median {r['min'] * 1e3:.0f}/{r['median'] * 1e3:.0f} ms, peak memory per rank "
              f"{r['peak'] / 2**20:.0f} MiB")
    print(f"ratio CP=2/CP=1: step time {two['min'] / one['min']:.2f} (min) {two['median'] / one['median']:.2f} (median), "
          f"peak memory per rank {two['peak'] / max(one['peak'], 1):.2f}")


if __name__ == "__main__":
    main()
