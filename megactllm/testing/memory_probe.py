"""Measure a training run's peak memory on CPU against megactllm.training.run.memory_estimate.

    python -m megactllm.testing.memory_probe --iters 3 [section.key=value ...]   # prints one JSON line

One process (TP=PP=DP=1), the real Trainer. The Python/torch/megatron baseline is measured
honestly and taken out: once the process groups exist and everything is imported, the resident
set (RSS) is read and the kernel's peak-RSS mark is reset (/proc/self/clear_refs); after a few
optimizer steps (Adam's state exists from the first), the peak minus that baseline is what the
run itself needed, which is what the estimate predicts. Datasets and the tokenizer are built
inside the measured window: they are small next to the model, and a real run pays them too.
By default glibc is told to hand freed blocks back (see track_live_memory), so the peak RSS is
the peak of live memory; --allocator-default measures what a plain process keeps resident.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def track_live_memory() -> None:
    """Make RSS follow live tensors: glibc returns every block over 64 KiB to the kernel when freed.

    By default glibc raises its mmap threshold after large frees and keeps freed tensors in its
    heap, so RSS also counts memory the process no longer uses; the estimate predicts live bytes
    (what torch.cuda.max_memory_allocated reports on a GPU).
    """
    import ctypes

    M_MMAP_THRESHOLD = -3
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024)


def measure(overrides: list[str], iters: int, live: bool = True) -> dict:
    from megactllm.config import load_config
    from megactllm.output import configure_output
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.testing.distributed import free_port
    from megactllm.training.run.memory_estimate import estimate_memory

    configure_output()
    if live:
        track_live_memory()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    cfg = load_config(None, overrides)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    from megactllm.training.trainer import Trainer  # imported before the baseline: its modules are baseline

    import megatron.core.distributed  # noqa: F401
    import megatron.core.optimizer  # noqa: F401

    baseline_kib = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    trainer = Trainer(cfg)
    trainer.resume_or_initialise()
    for chunk in trainer.model:
        chunk.train()
    for _ in range(iters):
        trainer.train_step()
    peak_kib = _status_kib("VmHWM")
    est = estimate_memory(cfg, 1)
    destroy_parallel()
    return {
        "baseline_bytes": baseline_kib * 1024,
        "peak_bytes": peak_kib * 1024,
        "measured_bytes": (peak_kib - baseline_kib) * 1024,
        "estimate_bytes": est.total,
        "estimate": {"weights": est.weights, "gradients": est.gradients, "optimizer": est.optimizer,
                     "activations": est.activations, "params": est.params_per_rank},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megactllm.testing.memory_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--allocator-default", action="store_true",
                        help="leave glibc's allocator as it is (RSS then includes freed memory it keeps)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.overrides, args.iters, live=not args.allocator_default)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
