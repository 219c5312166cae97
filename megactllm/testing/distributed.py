"""Run a function on N local processes as torchrun would (RANK, WORLD_SIZE, MASTER_* set).

Tests use it to exercise the real TP/PP/DP code on gloo CPU processes. The function must be
importable by name (defined at module top level); each rank's return value comes back in rank
order, and a failure on any rank raises with that rank's traceback.
"""
from __future__ import annotations

import multiprocessing as mp
from multiprocessing import reduction
import os
import pickle
import queue
import sys
import traceback
from typing import Any, Callable


from megactllm.common.env import free_port  # noqa: F401  (tests and benches take it from here)


# A fresh interpreter per rank would import torch and megatron-core again: about 5 s of CPU a rank on
# two cores, hundreds of times in the test suite. A fork server imports them once and forks the
# ranks from there; each rank then takes the caller's environment, working directory and sys.path
# as spawn would have given them.
PRELOAD = ("torch", "megatron.core")


def _context():
    import torch

    ctx = mp.get_context("forkserver")
    # A process forked after CUDA was initialised cannot use it, and imports may query the GPU: on a
    # machine with one the server imports nothing and each rank imports for itself.
    ctx.set_forkserver_preload([] if torch.cuda.is_available() else list(PRELOAD))
    return ctx


def _received_fd(fd):
    return fd.detach()


class _CallerFd:
    """One of the caller's file descriptors (its stdout/stderr: a terminal, a log, pytest's capfd),
    sent along with the fork request: a rank forked by the server would write to the server's."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return _received_fd, (reduction.DupFd(self.fd),)


def _rank_main(fn, rank, world_size, port, args, kwargs, results, env, caller):
    cwd, path, stdout, stderr = caller
    for received, target in ((stdout, 1), (stderr, 2)):
        os.dup2(received, target)
        os.close(received)
    os.chdir(cwd)
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(env)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        # Two cores are shared by all ranks: one intra-op thread each avoids oversubscription.
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
    )
    try:
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        value = fn(*args, **kwargs)
        # Plain pickle copies tensors into the message; the queue's own pickler would share them
        # through file descriptors that vanish when this process exits before the parent reads.
        results.put((rank, True, pickle.dumps(value)))
    except BaseException:  # report every failure, including SystemExit, to the parent
        results.put((rank, False, traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:
            pass


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args,
    timeout: float = 600.0,
    env: dict | None = None,
    **kwargs,
) -> list:
    """Run fn(*args, **kwargs) on `world_size` processes; returns their results by rank."""
    ctx = _context()
    results = ctx.Queue()
    port = free_port()
    full_env = {**os.environ, **(env or {})}
    sys.stdout.flush()
    sys.stderr.flush()
    caller = (os.getcwd(), list(sys.path), _CallerFd(1), _CallerFd(2))
    procs = [
        ctx.Process(target=_rank_main, args=(fn, rank, world_size, port, args, kwargs, results, full_env, caller))
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    collected: dict[int, Any] = {}
    errors: list[str] = []
    try:
        for _ in range(world_size):
            try:
                rank, ok, value = results.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"distributed run of {fn.__name__} timed out after {timeout}s") from None
            if ok:
                collected[rank] = pickle.loads(value)
            else:
                errors.append(f"rank {rank} failed:\n{value}")
                break  # the other ranks are likely blocked in a collective
    finally:
        for p in procs:
            p.join(timeout=5 if errors else 60)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise RuntimeError("\n".join(errors))
    return [collected[r] for r in range(world_size)]
