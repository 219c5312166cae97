#!/usr/bin/env python
"""Training time per save interval with synchronous vs asynchronous checkpoints (checkpoint.async_save).

    python bench/checkpoint.py                     # CPU, one process, ~40M-parameter model, 3 saves per run
    python bench/checkpoint.py --ranks 2 --pp 2    # two gloo ranks, each writing its pipeline stage

Runs alternate sync / async (--repeats pairs) on the same data; each times Trainer.fit() (model,
optimizer and Adam state saved every --save-interval iterations, the last save included) and prints
seconds per save interval (min and median over repeats), the ratio async/sync, and the checkpoint
size. With async saves only the snapshot and the background process's start stay on the training
path; the final save's write is waited for at the end of the run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from megactllm.config import load_config  # noqa: E402
from megactllm.testing import run_distributed  # noqa: E402


def overrides(args, data: str, run_dir: str, async_save: bool) -> list[str]:
    return [
        "model.arch=tiny", f"model.num_layers={args.layers}", f"model.hidden_size={args.hidden}",
        f"model.ffn_hidden_size={args.hidden * 8 // 3 // 8 * 8}", "model.num_attention_heads=8",
        f"model.vocab_size={args.vocab}", f"model.seq_length={args.seq}", f"model.max_position_embeddings={args.seq}",
        f"data.data_path=[{data}]", "data.split=100,0,0", f"data.data_cache_path={run_dir}/cache",
        "train.global_batch_size=4", "train.micro_batch_size=2", f"train.duration={args.iters} iterations",
        f"logging.interval={args.iters}", "validation.interval=0", "validation.iters=0",
        f"logging.dir={run_dir}/log", f"checkpoint.save={run_dir}/ckpt", f"checkpoint.interval={args.save_interval}",
        f"checkpoint.async_save={str(async_save).lower()}",
        f"parallel.pipeline_model_parallel_size={args.pp}", "parallel.use_distributed_optimizer=true",
    ]


def timed_fit(overrides_: list[str]) -> float:
    """Rank body: build the trainer, then time fit() alone (no start-up, no data indexing)."""
    from megactllm.parallel import initialize_parallel
    from megactllm.training.trainer import Trainer

    cfg = load_config(None, overrides_)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    trainer = Trainer(cfg)
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--save-interval", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from train_step import write_random_corpus

    intervals = args.iters // args.save_interval
    times: dict[str, list[float]] = {"sync": [], "async": []}
    with tempfile.TemporaryDirectory(prefix="megactllm-bench-ckpt-") as tmp:
        data = os.path.join(tmp, "corpus")
        write_random_corpus(data, args.vocab, 400_000)
        for r in range(args.repeats):
            for mode in ("sync", "async"):
                run_dir = os.path.join(tmp, f"{mode}{r}")
                per_rank = run_distributed(timed_fit, args.ranks, overrides(args, data, run_dir, mode == "async"), timeout=1800)
                times[mode].append(max(per_rank) / intervals)
                size = dir_bytes(os.path.join(run_dir, "ckpt", f"iter_{args.iters:07d}"))
                print(f"run {r} {mode}: {times[mode][-1]:.2f} s per save interval ({args.save_interval} iterations + 1 save)",
                      flush=True)
    print(f"checkpoint {size / 2**20:.0f} MiB (model + distributed optimizer), {args.ranks} rank(s), PP={args.pp}")
    for stat, fn in (("min", min), ("median", statistics.median)):
        s, a = fn(times["sync"]), fn(times["async"])
        print(f"{stat}: sync {s:.2f} s  async {a:.2f} s per save interval  ratio async/sync {a / s:.2f}")


if __name__ == "__main__":
    main()
