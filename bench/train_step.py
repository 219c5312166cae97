#!/usr/bin/env python
"""Step time of megactllm's training loop against a bare megatron-core loop, same model and batch.

The bare loop is what a minimal megatron-core script does per step: zero the grad buffers, read and
collate the micro-batches, get_forward_backward_func(), optimizer.step(), scheduler.step(). Ours
is Trainer.train_step (Task hooks, per-token loss reduction, guarded optimizer step) plus its
per-iteration bookkeeping. Both read the same megatron-core GPTDataset and build the same model.

    python bench/train_step.py                      # CPU: tiny-ish model, interleaved A/B steps
    python bench/train_step.py --compare-spikes     # CPU: the spike check's overhead, skip_spiky_steps true/false
    python bench/train_step.py --gpu                # one GPU: ctllm-2b, seq 4096, bf16, TE and local spec
    torchrun --nproc-per-node 8 bench/train_step.py --gpu --arch ctllm-2b   # (ratio per layout)

Prints step times (CPU: minimum and median of interleaved A/B steps; the minimum is the robust
figure on a shared machine), the ratio ours/bare (target <= 1.05) and, on GPU, tokens/s, TFLOP/s
and MFU against the 989 TFLOP/s H100 bf16 peak. --compare-spikes times two of our loops instead,
stability.skip_spiky_steps=true against false, interleaved the same way, and prints their ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from megactllm.config import load_config
from megactllm.model.families import family_of


def write_random_corpus(prefix: str, vocab: int, tokens: int, seed: int = 0) -> None:
    """Random documents (EOD-terminated) via megatron-core's builder, with our sidecar for the EOD id."""
    import json

    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    dtype = np.uint16 if vocab < 65500 else np.int32
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    written = 0
    while written < tokens:
        n = int(rng.integers(200, 2000))
        doc = rng.integers(3, vocab, n).astype(np.int64)
        doc[-1] = 2
        builder.add_document(torch.from_numpy(doc), [n])
        written += n
    builder.finalize(prefix + ".idx")
    with open(prefix + ".json", "w") as f:
        json.dump({"eod_id": 2, "vocab_size": vocab}, f)


class BareLoop:
    """The minimal megatron-core training step, for reference."""

    def __init__(self, cfg, dataset, use_te):
        from megatron.core.distributed import (
            DistributedDataParallel,
            DistributedDataParallelConfig,
            finalize_model_grads,
        )
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
        from megatron.core.transformer.module import Float16Module

        from megactllm.model import build_model
        from megactllm.parallel import default_device

        chunks = build_model(cfg.model, cfg.parallel, cfg.optim, use_te)
        config = chunks[0].config
        ddp = DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
                                            overlap_grad_reduce=cfg.parallel.overlap_grad_reduce)
        self.model = [DistributedDataParallel(config, ddp, Float16Module(config, c) if (config.bf16 or config.fp16) else c, disable_bucketing=i > 0)
                      for i, c in enumerate(chunks)]
        o = cfg.optim
        self.optimizer = get_megatron_optimizer(OptimizerConfig(
            optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2, clip_grad=o.clip_grad, bf16=o.bf16, fp16=o.fp16, params_dtype=config.params_dtype,
            use_distributed_optimizer=cfg.parallel.use_distributed_optimizer), self.model)
        self.scheduler = OptimizerParamScheduler(self.optimizer, 0.0, o.lr, o.min_lr, 0, 1000, "cosine", o.weight_decay,
                                                 o.weight_decay, 1000, "constant")
        config.finalize_model_grads_func = finalize_model_grads
        config.grad_scale_func = self.optimizer.scale_loss
        config.no_sync_func = self.model[0].no_sync
        self.cfg, self.dataset, self.device = cfg, dataset, default_device()
        self.consumed = 0

    def step(self):
        from megatron.core.pipeline_parallel import get_forward_backward_func

        t = self.cfg.train
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        batches = []
        for m in range(t.global_batch_size // t.micro_batch_size):
            items = [self.dataset[self.consumed + m * t.micro_batch_size + j] for j in range(t.micro_batch_size)]
            batches.append({k: torch.stack([it[k] for it in items]).to(self.device) for k in ("tokens", "labels", "loss_mask", "position_ids")})
        self.consumed += t.global_batch_size

        def forward_step(data_iterator, model):
            b = next(data_iterator)
            out = model(b["tokens"], b["position_ids"], None, labels=b["labels"])

            def loss_func(output):
                mask = b["loss_mask"].reshape(-1).float()
                loss = (output.float().reshape(-1) * mask).sum() / mask.sum()
                return loss, {"lm loss": loss.detach()}

            return out, loss_func

        get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter(batches), model=self.model[0],
                                    num_microbatches=len(batches), seq_length=self.cfg.model.seq_length,
                                    micro_batch_size=t.micro_batch_size, forward_only=False)
        ok, _, _ = self.optimizer.step()
        if ok:
            self.scheduler.step(1)


class OurLoop:
    def __init__(self, cfg, use_te):
        from megactllm.training.trainer import Trainer

        from megactllm.training.callbacks import NonFiniteStop, SpikeSkipping

        self.trainer = Trainer(cfg, use_transformer_engine=use_te)
        self.guard = self.trainer.callbacks.of(NonFiniteStop).guard
        self.guard.max_consecutive = 0
        self.vetoed = 0
        self.spikes = next((cb for cb in self.trainer.callbacks.callbacks if isinstance(cb, SpikeSkipping)), None)
        if self.spikes is not None:
            # A full window, so every step is judged (both columns' mean and std over spike_window
            # values) as in a long run; its values sit far above any real loss and grad norm, so
            # no step is skipped and both loops do the same arithmetic.
            w = self.spikes.window
            w.values.extend((1e3 + 0.01 * i, 1e4 + 0.01 * i) for i in range(w.window))

    def step(self):
        from megactllm.training.callbacks import Step

        tr, t = self.trainer, self.trainer.cfg.train
        metrics, outcome = tr.train_step()
        # The loop's per-iteration bookkeeping (counters; logging happens every log_interval).
        tr.state.iteration += 1
        tr.state.consumed_samples += t.global_batch_size
        tr.state.consumed_tokens += t.global_batch_size * tr.cfg.model.seq_length
        self.guard.record(tr.state.iteration, outcome.skip_reason == "non-finite", None)
        self.vetoed += int(outcome.vetoed)
        if self.spikes is not None:  # the window update after an applied step
            loss = metrics[tr.metric_names[0]]
            self.spikes.on_step_end(tr, Step(tr.state.iteration, metrics, loss, outcome, 0))


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(loop) -> float:
    sync()
    start = time.perf_counter()
    loop.step()
    sync()
    return time.perf_counter() - start


def bench_cpu(args, overrides):
    cfg = load_config(None, overrides)
    ours = OurLoop(cfg, use_te=False)
    bare = BareLoop(cfg, ours.trainer.train_ds, use_te=False)
    # Same initial weights, so both do identical arithmetic.
    for a, b in zip(ours.trainer.model, bare.model):
        b.module.load_state_dict(a.module.state_dict())
    return interleaved(args, {"ours": ours, "bare": bare})


def interleaved(args, loops: dict) -> dict:
    """Step times of two loops, alternating which goes first; (min, median) per loop."""
    (a, loop_a), (b, loop_b) = loops.items()
    times = {a: [], b: []}
    for i in range(args.warmup + args.steps):
        # Interleaved A/B (alternating who goes first) cancels the drift of a shared machine.
        order = [(a, loop_a), (b, loop_b)] if i % 2 == 0 else [(b, loop_b), (a, loop_a)]
        for name, loop in order:
            dt = timed(loop)
            if i >= args.warmup:
                times[name].append(dt)
    # The minimum is the step's cost without interference from other processes on a shared CPU;
    # the median is reported beside it.
    return {name: (min(v), statistics.median(v)) for name, v in times.items()}


def bench_spikes(args, overrides):
    """skip_spiky_steps=true against false: two of our loops, same weights, interleaved steps."""
    on = OurLoop(load_config(None, overrides + ["stability.skip_spiky_steps=true"]), use_te=False)
    off = OurLoop(load_config(None, overrides + ["stability.skip_spiky_steps=false"]), use_te=False)
    assert on.spikes is not None and off.spikes is None
    for a, b in zip(on.trainer.model, off.trainer.model):
        b.module.load_state_dict(a.module.state_dict())
    t = interleaved(args, {"on": on, "off": off})
    skipped = on.vetoed
    assert skipped == 0, f"{skipped} steps skipped: the two loops did different work"
    # The check alone (judge the step against a full window, then record it), far below a step's
    # noise on a shared CPU: timed over many calls on a copy of the window.
    import copy

    window, calls = copy.deepcopy(on.spikes.window), 2000
    start = time.perf_counter()
    for _ in range(calls):
        window.judge(8.0, 1.0)
        window.record(1e3, 1e4)
    t["check"] = ((time.perf_counter() - start) / calls,) * 2
    return t


def on_window(overrides) -> int:
    return load_config(None, overrides).stability.spike_window


def bench_gpu_phase(args, overrides, use_te, which):
    if not use_te:
        # The local spec's unfused attention materialises [b, heads, s, s] scores (tens of GiB at
        # seq 4096 over 32 layers): recompute core attention (selective), as Megatron does.
        overrides = overrides + ["parallel.recompute_granularity=selective"]
    cfg = load_config(None, overrides)
    if which == "ours":
        loop = OurLoop(cfg, use_te)
    else:
        from megactllm.training.stages.pretrain import PretrainTask

        datasets = PretrainTask(cfg).build_datasets(cfg, None)
        loop = BareLoop(cfg, datasets[0], use_te)
    times = [timed(loop) for _ in range(args.warmup + args.steps)][args.warmup:]
    peak = torch.cuda.max_memory_allocated() / 2**30
    del loop
    torch.cuda.empty_cache()
    return statistics.median(times), peak


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu", action="store_true", help="ctllm-2b at seq 4096 on the GPU(s), bf16")
    p.add_argument("--arch", default=None, help="model.arch (default: tiny on CPU, ctllm-2b on GPU)")
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--mbs", type=int, default=None)
    p.add_argument("--gbs", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compare-spikes", action="store_true",
                   help="CPU: stability.skip_spiky_steps=true against false (the check's overhead), not ours against bare")
    p.add_argument("--no-te-compare", action="store_true", help="GPU: skip the local-spec (no TE) run")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    args = p.parse_args()

    from megactllm.parallel import initialize_parallel
    from megactllm.training.run.metrics import H100_BF16_PEAK_TFLOPS

    gpu = args.gpu
    if gpu and not torch.cuda.is_available():
        sys.exit("--gpu: no CUDA device visible")
    arch = args.arch or ("ctllm-2b" if gpu else "tiny")
    seq = args.seq or (4096 if gpu else 128)
    mbs = args.mbs or (1 if gpu else 2)
    gbs = args.gbs or 8
    args.steps = args.steps or (10 if gpu else 20)
    vocab = 125696 if arch == "ctllm-2b" else 32000 if arch == "llama2-7b" else 4000
    work = tempfile.mkdtemp(prefix="megactllm_bench_")
    prefix = os.path.join(work, "random_text_document")
    overrides = [
        f"model.arch={arch}", f"model.seq_length={seq}", f"model.max_position_embeddings={seq}",
        f"model.vocab_size={vocab}",
        # A CPU model where the step is mostly compute yet short: hidden 128, 4 layers.
        *([] if gpu else ["model.hidden_size=128", "model.ffn_hidden_size=352", "model.num_attention_heads=4"]),
        f"data.data_path=[{prefix}]", "data.split=100,0,0", f"data.data_cache_path={work}/cache",
        f"train.micro_batch_size={mbs}", f"train.global_batch_size={gbs}",
        f"train.duration={2 * (args.warmup + args.steps) + 2} iterations", "validation.interval=0", "validation.iters=0",
        "logging.interval=1000000", f"logging.dir={work}/log",
        *(["optim.bf16=true"] if gpu else []),
        *args.overrides,
    ]
    cfg = load_config(None, overrides)
    if "WORLD_SIZE" not in os.environ and "SLURM_PROCID" not in os.environ:
        from megactllm.testing.distributed import free_port

        os.environ.setdefault("MASTER_PORT", str(free_port()))  # a lone process: any free port
    env = initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    tokens_needed = (2 * (args.warmup + args.steps) + 4) * gbs * (seq + 1) * 2
    if env.rank == 0:
        write_random_corpus(prefix, vocab, tokens_needed)
    torch.distributed.barrier()

    tokens_per_step = gbs * seq
    flops_per_token = family_of(cfg.model).flops_per_token(cfg.model, seq)
    world = torch.distributed.get_world_size()
    lines = [f"megactllm train-step bench: {arch}, seq {seq}, micro-batch {mbs}, global batch {gbs}, world {world}, "
             f"{'GPU ' + torch.cuda.get_device_name() if gpu else 'CPU'}, {args.steps} timed steps after {args.warmup}"]
    if args.compare_spikes:
        if gpu:
            sys.exit("--compare-spikes runs on CPU")
        t = bench_spikes(args, overrides)
        lines.append(f"  skip_spiky_steps=false   min {t['off'][0] * 1000:8.1f} ms   median {t['off'][1] * 1000:8.1f} ms")
        lines.append(f"  skip_spiky_steps=true    min {t['on'][0] * 1000:8.1f} ms   median {t['on'][1] * 1000:8.1f} ms")
        lines.append(f"  ratio true/false         min {t['on'][0] / t['off'][0]:8.3f}      median {t['on'][1] / t['off'][1]:8.3f}")
        lines.append(f"  the check alone          {t['check'][0] * 1e6:8.1f} us per step = {100 * t['check'][0] / t['off'][0]:.3f}% "
                     f"of the fastest step (window {on_window(overrides)}; no all-reduce at world 1)")
    elif not gpu:
        t = bench_cpu(args, overrides)
        lines.append(f"  bare megatron-core step  min {t['bare'][0] * 1000:8.1f} ms   median {t['bare'][1] * 1000:8.1f} ms")
        lines.append(f"  megactllm step           min {t['ours'][0] * 1000:8.1f} ms   median {t['ours'][1] * 1000:8.1f} ms")
        lines.append(f"  ratio ours/bare          min {t['ours'][0] / t['bare'][0]:8.3f}      median {t['ours'][1] / t['bare'][1]:8.3f}   (target <= 1.05)")
    else:
        from megactllm.model import transformer_engine_available

        specs = [True, False] if transformer_engine_available() and not args.no_te_compare else [transformer_engine_available()]
        for use_te in specs:
            ours, peak = bench_gpu_phase(args, overrides, use_te, "ours")
            bare, _ = bench_gpu_phase(args, overrides, use_te, "bare")
            tps = tokens_per_step / ours
            tflops = flops_per_token * tps / world / 1e12
            lines.append(f"  [{'Transformer Engine' if use_te else 'local spec (no TE), selective recompute'}] ours {ours * 1000:.1f} ms, bare {bare * 1000:.1f} ms, "
                         f"ratio {ours / bare:.3f}; {tps:,.0f} tokens/s, {tflops:.1f} TFLOP/s/GPU, "
                         f"MFU {100 * tflops / H100_BF16_PEAK_TFLOPS:.1f}% (989 peak), peak memory {peak:.1f} GiB")
    if env.rank == 0:
        print("\n".join(lines), flush=True)
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
