#!/usr/bin/env python
"""Cost of a blend schedule: reading and training on a scheduled blend against a fixed blend of the
same datasets, interleaved in one run.

Three random corpora; the fixed blend is megatron-core's BlendedDataset over them (data.data_path),
the scheduled one (data.blend_schedule) has three phases over the same datasets. Measured, A/B
interleaved with the order alternating each round:
  fetch: GlobalBatchReader.step (read + collate one global batch), the part a schedule touches;
  direct: the same samples through the schedule or straight from the phase's BlendedDataset;
  step:  Trainer.train_step of the tiny model on each reader's batch (what a run pays per step).
Prints the median and minimum per round and the ratio scheduled/fixed (target <= 1.01).

    python bench/blend_schedule.py                  # CPU, one process
    python bench/blend_schedule.py --rounds 1000 --step-rounds 100 --seq 512
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from megactllm.config import load_config  # noqa: E402


def _overrides(prefixes, work, args, scheduled: bool) -> list[str]:
    a, b, c = prefixes
    base = [
        "model.arch=tiny", "model.vocab_size=32000", f"model.seq_length={args.seq}",
        f"model.max_position_embeddings={args.seq}", "data.split=100,0,0", f"data.data_cache_path={work}/cache",
        f"train.global_batch_size={args.gbs}", f"train.micro_batch_size={args.mbs}",
        f"train.duration={args.rounds + 1} iterations", "validation.interval=0", "validation.iters=0",
        f"logging.dir={work}/log", "optim.lr_warmup_iters=0",
    ]
    if not scheduled:
        return base + [f"data.data_path=[0.3, {a}, 0.5, {b}, 0.2, {c}]"]
    third = max(1, (args.rounds + 1) // 3)
    schedule = [
        {"name": "warm", "end_iteration": third, "blend": ["0.3", a, "0.5", b, "0.2", c]},
        {"name": "stable", "end_iteration": 2 * third, "blend": ["0.6", b, "0.4", c]},
        {"name": "decay", "blend": ["0.2", a, "0.8", c]},
    ]
    return base + ["data.blend_schedule=" + json.dumps(schedule)]


def _summary(name: str, fixed: list, sched: list) -> str:
    mf, ms = statistics.median(fixed), statistics.median(sched)
    nf, ns = min(fixed), min(sched)
    return (f"{name}: fixed median {mf * 1e3:.3f} ms min {nf * 1e3:.3f} ms | scheduled median {ms * 1e3:.3f} ms "
            f"min {ns * 1e3:.3f} ms | ratio scheduled/fixed median {ms / mf:.3f} min {ns / nf:.3f} (target <= 1.01)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=500, help="interleaved A/B fetch rounds (one global batch each)")
    p.add_argument("--step-rounds", type=int, default=40, help="interleaved A/B training-step rounds")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--gbs", type=int, default=16)
    p.add_argument("--mbs", type=int, default=4)
    p.add_argument("--no-step", action="store_true", help="time only the batch fetch, not the training step")
    args = p.parse_args()
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        from megactllm.testing.distributed import free_port

        os.environ["MASTER_PORT"] = str(free_port())

    from train_step import write_random_corpus

    from megactllm.parallel import initialize_parallel
    from megactllm.training.batches import GlobalBatchReader
    from megactllm.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as work:
        prefixes = [f"{work}/{name}" for name in ("a", "b", "c")]
        for i, prefix in enumerate(prefixes):
            write_random_corpus(prefix, 32000, 400_000, seed=i)
        sched_cfg = load_config(None, _overrides(prefixes, work, args, scheduled=True))
        fixed_cfg = load_config(None, _overrides(prefixes, work, args, scheduled=False))
        initialize_parallel(sched_cfg.parallel, sched_cfg.train.seed, sched_cfg.model.num_layers)
        trainer = Trainer(sched_cfg)  # the scheduled datasets, the model, the optimizer
        fixed_ds, _, _ = trainer.task.build_datasets(fixed_cfg, None)
        scheduled_reader = trainer.train_reader
        fixed_reader = GlobalBatchReader(fixed_ds, args.gbs, args.mbs, 0, 1, trainer.device)
        assert len(fixed_ds) >= len(trainer.train_ds), (len(fixed_ds), len(trainer.train_ds))

        fetch = {"fixed": [], "scheduled": []}
        readers = {"fixed": fixed_reader, "scheduled": scheduled_reader}
        for k in range(args.rounds):
            order = ("fixed", "scheduled") if k % 2 == 0 else ("scheduled", "fixed")
            for name in order:
                t0 = time.perf_counter()
                readers[name].step(k * args.gbs)
                fetch[name].append(time.perf_counter() - t0)
        print(f"{args.rounds} interleaved rounds, global batch {args.gbs} x seq {args.seq}, 3 phases vs a fixed 3-dataset blend")
        print(_summary("fetch (read + collate a global batch)", fetch["fixed"], fetch["scheduled"]))

        # The schedule's own work, isolated: the same samples through ScheduledBlendDataset or
        # straight from the phase's BlendedDataset (what is left is the phase lookup and the id map).
        sched = trainer.train_ds
        direct = {"fixed": [], "scheduled": []}  # "fixed": the phase dataset read directly
        for k in range(args.rounds):
            indices = range(k * args.gbs, (k + 1) * args.gbs)
            located = [sched.locate(i) for i in indices]
            order = ("fixed", "scheduled") if k % 2 == 0 else ("scheduled", "fixed")
            for name in order:
                t0 = time.perf_counter()
                if name == "scheduled":
                    for i in indices:
                        sched[i]
                else:
                    for p, local in located:
                        sched.phase_datasets[p][local]
                direct[name].append(time.perf_counter() - t0)
        print(_summary("samples via the schedule vs its phase's BlendedDataset directly", direct["fixed"], direct["scheduled"]))

        if not args.no_step:
            step = {"fixed": [], "scheduled": []}
            for k in range(args.step_rounds):
                order = ("fixed", "scheduled") if k % 2 == 0 else ("scheduled", "fixed")
                for name in order:
                    trainer.train_reader = readers[name]
                    # Strided over the run, so the steps visit every phase.
                    trainer.state.consumed_samples = k * max(1, args.rounds // args.step_rounds) * args.gbs
                    t0 = time.perf_counter()
                    trainer.train_step()
                    step[name].append(time.perf_counter() - t0)
            print(f"{args.step_rounds} interleaved training-step rounds")
            print(_summary("train step (tiny model, read + forward/backward + optimizer)", step["fixed"], step["scheduled"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
