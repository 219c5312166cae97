"""Training stages: bf16 against fp32 losses, throughput/MFU with the memory estimate, save and resume."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.gpu_check.context import Context
from bench.gpu_check.report import Skip
from bench.gpu_check.setup_run import run_overrides, sync

PARITY_STEPS = 20  # on a GPU; the CPU run (CI) takes 5
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per operation); over 20 steps of a tiny
# model the per-step loss of bf16 training stays within 2% of fp32's.
BF16_LOSS_RTOL = 0.02


def _trainer(overrides: list[str], use_te=False):
    from megactllm.config import load_config
    from megactllm.parallel.initialize import set_random_seed
    from megactllm.training.trainer import Trainer

    cfg = load_config(None, overrides)
    # Every run in this process starts from the seed, as a fresh process would (same initial weights).
    set_random_seed(cfg.train.seed)
    return Trainer(cfg, use_transformer_engine=use_te)


def _tiny_overrides(ctx: Context, name: str, iters: int, extra=()) -> list[str]:
    s = ctx.shapes
    return run_overrides(ctx.work, name, ctx.tiny_corpus(), "tiny", s.tiny_seq, iters, gbs=4, mbs=2, extra=(
        f"model.hidden_size={s.tiny_hidden}", f"model.ffn_hidden_size={s.tiny_hidden * 8 // 3 // 8 * 8}",
        f"model.num_attention_heads={s.tiny_heads}", f"model.num_layers={s.tiny_layers}", "model.vocab_size=256",
        f"data.tokenizer_model={ctx.tokenizer()}", *extra))


def fp32_reference(overrides_start: list[str], overrides_run: list[str]) -> dict:
    """fp32 losses from a one-step starting checkpoint (saved by the first run): the shared weights."""
    _trainer(overrides_start).fit()
    result = _trainer(overrides_run).fit()
    return {int(k): v for k, v in result.losses.items()}


def bf16_vs_fp32(ctx: Context) -> tuple[dict, str]:
    start_dir = ctx.work / "parity_start"
    start = _tiny_overrides(ctx, "parity_start", 1, (f"checkpoint.save={start_dir}", "checkpoint.interval=1"))
    common = (f"checkpoint.pretrained={start_dir}",)
    steps = PARITY_STEPS if ctx.gpu else 5
    ref_run = _tiny_overrides(ctx, "parity_fp32", steps, common)
    bf16_run = _tiny_overrides(ctx, "parity_bf16", steps, (*common, "optim.bf16=true"))
    if ctx.gpu:
        # The reference runs where the GPU is hidden: the same code on the CPU, in fp32.
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        env.pop("MASTER_PORT", None)
        out = subprocess.run([sys.executable, "-m", "bench.gpu_check.reference", json.dumps([start, ref_run])],
                             capture_output=True, text=True, env=env, cwd=ctx.repo, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"the CPU fp32 reference failed: {out.stderr.strip()[-600:]}")
        reference = {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    else:
        reference = fp32_reference(start, ref_run)
    losses = _trainer(bf16_run).fit().losses
    expected = steps
    steps = sorted(reference)
    if sorted(losses) != steps or len(steps) != expected:
        raise RuntimeError(f"iterations differ: fp32 {steps}, bf16 {sorted(losses)}")
    rel = [abs(losses[i] - reference[i]) / abs(reference[i]) for i in steps]
    worst = max(rel)
    figures = {"steps": len(steps), "fp32 first loss": reference[steps[0]], "fp32 last loss": reference[steps[-1]],
               "bf16 last loss": losses[steps[-1]], "max relative difference": worst, "tolerance": BF16_LOSS_RTOL}
    where = "bf16 on the GPU against fp32 on the CPU" if ctx.gpu else "bf16 against fp32, both on the CPU"
    if worst > BF16_LOSS_RTOL:
        raise AssertionError(f"{where}: losses differ by {worst:.3g} (relative) > {BF16_LOSS_RTOL}: {figures}")
    return figures, f"{where}, same start checkpoint and batches, {len(steps)} steps"


def _timed_steps(trainer, warmup: int, steps: int) -> list[float]:
    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        trainer.train_step()
        trainer.state.consumed_samples += trainer.cfg.train.global_batch_size
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def throughput(ctx: Context, recompute: bool, use_te: bool = False) -> tuple[dict, str]:
    """The big shape on one device: tokens/s, TFLOP/s, MFU, peak memory against the estimate."""
    from megactllm.config import load_config
    from megactllm.model.families import family_of
    from megactllm.training.run.memory_estimate import estimate_memory
    from megactllm.training.run.metrics import device_peak_tflops

    s = ctx.shapes
    if use_te and not ctx.gpu:
        raise Skip("needs a GPU (Transformer Engine)")
    vocab = 125696 if s.big_arch == "ctllm-2b" else 256
    extra = [*s.big_overrides, f"model.vocab_size={vocab}"]
    if ctx.gpu:
        extra.append("optim.bf16=true")
    if recompute:
        extra.append("parallel.recompute_granularity=selective")
    overrides = run_overrides(ctx.work, "throughput", ctx.big_corpus(vocab), s.big_arch, s.big_seq,
                              2 * (s.warmup_steps + s.timed_steps) + 2, s.global_batch, extra=extra)
    cfg = load_config(None, overrides)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = _trainer(overrides, use_te)
    try:
        times = _timed_steps(trainer, s.warmup_steps, s.timed_steps)
    finally:
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        del trainer
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    step = statistics.median(times)
    tokens_per_s = s.global_batch * s.big_seq / step
    tflops = family_of(cfg.model).flops_per_token(cfg.model, s.big_seq) * tokens_per_s / 1e12
    figures = {"model": f"{s.big_arch} seq {s.big_seq}", "step s (median)": step, "tokens/s": tokens_per_s,
               "TFLOP/s": tflops}
    peak_tflops = device_peak_tflops()
    if peak_tflops:
        figures["MFU"] = tflops / peak_tflops
        figures["peak TFLOP/s"] = peak_tflops
    estimate = estimate_memory(cfg, 1).total
    figures["memory estimate GiB"] = estimate / 2**30
    if peak is not None:
        figures["peak memory GiB"] = peak / 2**30
        figures["peak/estimate"] = peak / estimate
    spec = "TE spec" if use_te else "local spec (SDPA)"
    return figures, (f"{spec}, {'selective' if recompute else 'no'} recompute, {s.timed_steps} timed steps after "
                     f"{s.warmup_steps}, global batch {s.global_batch} x micro 1")


def save_resume(ctx: Context) -> tuple[dict, str]:
    """Stop after a save, resume: the next losses bit-identical to an uninterrupted run's."""
    iters, at = (8, 4) if ctx.gpu else (4, 2)
    ckpt = ctx.work / "resume_ckpt"
    reference = _trainer(_tiny_overrides(ctx, "resume_ref", iters)).fit().losses
    saving = (f"checkpoint.save={ckpt}", f"checkpoint.interval={at}")
    first = _trainer(_tiny_overrides(ctx, "resume_a", iters, (*saving, f"run.exit_interval={at}"))).fit()
    if max(first.losses) != at:
        raise RuntimeError(f"the first run should stop at iteration {at}, ran to {max(first.losses)}")
    second = _trainer(_tiny_overrides(ctx, "resume_b", iters, (*saving, f"checkpoint.load={ckpt}"))).fit()
    resumed = {i: second.losses[i] for i in range(at + 1, iters + 1)}
    expected = {i: reference[i] for i in resumed}
    if resumed != expected:
        raise AssertionError(f"resumed losses {resumed} != uninterrupted {expected}")
    return ({"resumed from": at, "identical steps": len(resumed), "loss at last step": resumed[iters]},
            "losses after the resume equal the uninterrupted run's bit for bit")


def async_vs_sync(ctx: Context) -> tuple[dict, str]:
    """Seconds per save interval with synchronous and asynchronous checkpoints (checkpoint.async_save)."""
    iters, interval = (12, 4) if ctx.gpu else (2, 1)
    figures = {}
    for mode in ("sync", "async"):
        run = ctx.work / f"save_{mode}"
        shutil.rmtree(run, ignore_errors=True)
        trainer = _trainer(_tiny_overrides(ctx, f"save_{mode}", iters, (
            f"checkpoint.save={run}", f"checkpoint.interval={interval}", f"checkpoint.async_save={str(mode == 'async').lower()}")))
        t0 = time.perf_counter()
        trainer.fit()
        figures[f"{mode} s/interval"] = (time.perf_counter() - t0) / (iters // interval)
    figures["async/sync"] = figures["async s/interval"] / figures["sync s/interval"]
    return figures, f"{iters} iterations, a save every {interval} (model + Adam state), the last write waited for"
