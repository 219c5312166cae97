"""One writer per checkpoint directory (megactllm.training.run.lock): taken at the start before any
other callback starts, checked before every checkpoint write, released however the run ended
(on_close runs on every way out of a started run; a lock another run took over is left to it)."""
from __future__ import annotations

from megactllm.training.callbacks.base import PRIORITY_LOCK, Callback
from megactllm.training.run import lock as run_lock


class RunLockHolder(Callback):
    name = "run_lock"
    priority = PRIORITY_LOCK

    def __init__(self, directory: str, stale_after_s: float):
        self.directory = directory
        self.stale_after_s = stale_after_s
        self.lock = None  # rank 0's RunLock; None on the other ranks

    def on_train_start(self, trainer) -> None:
        # Every rank raises RunLockError when rank 0 cannot take the lock.
        self.lock = run_lock.acquire_on_rank0(self.directory, self.stale_after_s)

    def before_save(self, trainer) -> None:
        # A lost lock is fatal here, on every rank, before anything in the directory is touched.
        run_lock.check_still_held(self.lock, self.directory)

    def on_close(self, trainer) -> None:
        if self.lock is not None:
            self.lock.release()  # removes the file only while it is still ours
            self.lock = None
