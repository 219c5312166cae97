#!/usr/bin/env python
"""Core attention step time and peak memory: SDPAttention (torch's fused kernel) vs megatron's local
DotProductAttention, forward + backward, causal, GQA, at several sequence lengths.

    python bench/attention.py                       # CPU: seq 1024 and 4096, 8 heads / 2 groups x 64
    python bench/attention.py --gpu --dtype bf16    # one GPU: same, peak from torch.cuda

Step time: both modules run interleaved in one process (min and median of --steps pairs), and the
ratio sdpa/megatron is printed. Peak memory: each (module, seq) runs in its own process; on CPU the
figure is the growth of the process's peak RSS over the inputs alone (VmHWM, which unlike
ru_maxrss does not inherit the launching process's peak across exec), on GPU
torch.cuda.max_memory_allocated over the inputs. Lower is better for both.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from megactllm.config import load_config  # noqa: E402


def build(args, kind: str):
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megactllm.model import build_transformer_config
    from megactllm.model.sdpa_attention import SDPAttention

    cfg = load_config(None, [
        "model.arch=tiny", f"model.num_attention_heads={args.heads}", f"model.num_query_groups={args.groups}",
        f"model.hidden_size={args.heads * args.head_dim}", f"optim.bf16={args.dtype == 'bf16'}",
    ])
    config = build_transformer_config(cfg.model, cfg.parallel, cfg.optim)
    config.kv_channels = args.head_dim
    cls = SDPAttention if kind == "sdpa" else DotProductAttention
    return cls(config=config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")


def inputs(args, seq: int, device):
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = lambda heads: (seq, args.batch, heads, args.head_dim)  # noqa: E731
    q, k, v = (torch.randn(shape(h), generator=g, dtype=torch.float32).to(device, dtype).requires_grad_()
               for h in (args.heads, args.groups, args.groups))
    return q, k, v


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def step(module, q, k, v, device) -> float:
    start = time.perf_counter()
    out = module(q, k, v, None)
    out.float().square().mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_child(args) -> None:
    """Child process: print the peak memory one module's steps add at one sequence length."""
    from megactllm.convert.process_group import single_process_group
    from megactllm.parallel import initialize_parallel

    device = torch.device("cuda" if args.gpu else "cpu")
    with single_process_group():
        initialize_parallel(load_config(None, []).parallel, seed=0)
        module = build(args, args.peak_of).to(device)
        q, k, v = inputs(args, args.peak_seq, device)
        if args.gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.max_memory_allocated()
        else:
            base = _peak_rss_bytes()
        for _ in range(2):
            step(module, q, k, v, device)
            q.grad = k.grad = v.grad = None
        peak = torch.cuda.max_memory_allocated() if args.gpu else _peak_rss_bytes()
    print(json.dumps({"peak_bytes": peak - base}))


def peak_bytes(args, kind: str, seq: int) -> int:
    cmd = [sys.executable, __file__, "--peak-of", kind, "--peak-seq", str(seq)] + _shared_flags(args)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"]


def _shared_flags(args) -> list[str]:
    flags = ["--heads", str(args.heads), "--groups", str(args.groups), "--head-dim", str(args.head_dim),
             "--batch", str(args.batch), "--dtype", args.dtype]
    return flags + (["--gpu"] if args.gpu else [])


def time_both(args, seq: int) -> dict:
    device = torch.device("cuda" if args.gpu else "cpu")
    modules = {kind: build(args, kind).to(device) for kind in ("megatron", "sdpa")}
    q, k, v = inputs(args, seq, device)
    times = {kind: [] for kind in modules}
    for i in range(args.steps + 1):
        for kind, module in modules.items():
            t = step(module, q, k, v, device)
            q.grad = k.grad = v.grad = None
            if i:  # the first pair warms up
                times[kind].append(t)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--peak-of", choices=["megatron", "sdpa"], help=argparse.SUPPRESS)
    p.add_argument("--peak-seq", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.gpu and not torch.cuda.is_available():
        p.error("--gpu needs CUDA")
    if args.peak_of:
        peak_child(args)
        return

    from megactllm.convert.process_group import single_process_group
    from megactllm.parallel import initialize_parallel

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))))
    print(f"core attention fwd+bwd, causal, {args.heads} heads / {args.groups} kv groups x {args.head_dim}, "
          f"batch {args.batch}, {args.dtype}, {'cuda' if args.gpu else f'cpu ({torch.get_num_threads()} threads)'}")
    for seq in args.seq:
        with single_process_group():
            initialize_parallel(load_config(None, []).parallel, seed=0)
            times = time_both(args, seq)
        mins = {k: min(v) for k, v in times.items()}
        meds = {k: statistics.median(v) for k, v in times.items()}
        peaks = {k: peak_bytes(args, k, seq) for k in ("megatron", "sdpa")}
        print(f"seq {seq}: step min/median  megatron {mins['megatron'] * 1e3:.1f}/{meds['megatron'] * 1e3:.1f} ms  "
              f"sdpa {mins['sdpa'] * 1e3:.1f}/{meds['sdpa'] * 1e3:.1f} ms  ratio sdpa/megatron "
              f"{mins['sdpa'] / mins['megatron']:.2f} (min) {meds['sdpa'] / meds['megatron']:.2f} (median)")
        print(f"seq {seq}: peak memory  megatron {peaks['megatron'] / 2**20:.0f} MiB  sdpa {peaks['sdpa'] / 2**20:.0f} MiB  "
              f"ratio sdpa/megatron {peaks['sdpa'] / max(peaks['megatron'], 1):.2f}")


if __name__ == "__main__":
    main()
