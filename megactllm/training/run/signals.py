"""Stop a run cleanly when the scheduler asks: SIGTERM / SIGUSR1, or `run.exit_duration_minutes`.

A signal handler only sets a flag; a launch script may also create the file named by
$MEGACTLLM_STOP_FILE (a batch shell that got SLURM's warning signal: signalling the whole step
would also hit helper processes, such as megatron-core's checkpoint writers). At every iteration
boundary all ranks all-reduce their flags (and whether their wall-clock budget is spent), so every
rank stops at the same iteration, the loop saves a checkpoint, and `megactllm.train` exits with
EXIT_CODE_RESUME: "stopped early, resume me". A SLURM batch script cannot always see that code
(torchrun reports any worker failure as 1), so rank 0 also writes it to the file named by
$MEGACTLLM_EXIT_STATUS, which the script reads to decide on `scontrol requeue`
(examples/slurm_step.sh). Both files must be on a file system every node sees.

    install()                       # first thing in a worker: before heavy imports
    watch = ExitWatch(cfg.run.exit_duration_minutes)
    reason = watch.check()          # each iteration, on every rank: None or the same reason everywhere
"""
from __future__ import annotations

import os
import signal
import time
from typing import Optional

from megactllm.common.atomic import write_text_atomic
from megactllm.common.env import launch_rank

EXIT_CODE_RESUME = 75  # sysexits' EX_TEMPFAIL: not finished, a checkpoint to resume from was saved
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_STATUS_ENV = "MEGACTLLM_EXIT_STATUS"
STOP_FILE_ENV = "MEGACTLLM_STOP_FILE"

_received: Optional[int] = None  # the first stop signal this process got
_started_at = time.monotonic()   # exit_duration_minutes counts from here (process start, about)


def _on_signal(signum, frame) -> None:
    global _received
    if _received is None:
        _received = signum


def install() -> None:
    """SIGTERM and SIGUSR1 set the stop flag instead of killing the process."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)


def received_signal() -> Optional[str]:
    return signal.Signals(_received).name if _received is not None else None


def reset() -> None:
    """Forget a received signal and restart the duration clock (tests, and a second run in-process)."""
    global _received, _started_at
    _received = None
    _started_at = time.monotonic()


class ExitWatch:
    """Asks every rank at an iteration boundary whether the run must stop now; all get one answer."""

    def __init__(self, exit_duration_minutes: Optional[float] = None):
        self.exit_duration_minutes = exit_duration_minutes

    def _local_flags(self) -> list[float]:
        over_time = (
            self.exit_duration_minutes is not None
            and time.monotonic() - _started_at >= self.exit_duration_minutes * 60
        )
        stop_file = os.environ.get(STOP_FILE_ENV)
        requested = _received or (signal.SIGUSR1 if stop_file and os.path.exists(stop_file) else 0)
        return [float(requested), float(over_time)]

    def check(self) -> Optional[str]:
        """None, or why to stop: `SIGTERM`/`SIGUSR1` (on some rank; the stop file counts as SIGUSR1)
        or `exit_duration_minutes`.

        A collective: every rank must call it at the same iteration.
        """
        import torch
        import torch.distributed as dist

        from megactllm.parallel import default_device

        flags = torch.tensor(self._local_flags(), dtype=torch.float32, device=default_device())
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0] > 0:  # the highest signal number any rank got: every rank names the same one
            return signal.Signals(int(flags[0])).name
        if flags[1] > 0:
            return "exit_duration_minutes"
        return None


def write_exit_status(code: int, reason: Optional[str], iteration: Optional[int]) -> None:
    """Rank 0 records the exit code in $MEGACTLLM_EXIT_STATUS (when set) for the launch script."""
    path = os.environ.get(EXIT_STATUS_ENV)
    if not path or launch_rank() != 0:
        return
    # one line a shell reads with `read code reason iteration`
    write_text_atomic(path, f"{code} {(reason or 'none').replace(' ', '_')} {iteration if iteration is not None else -1}\n")
