"""One writer per checkpoint directory: `{train.save}/run.lock`, taken by rank 0 before training.

The lock file names its holder (host, pid, start time, SLURM job) and carries a heartbeat that a
background thread refreshes. A second run aiming at the same directory stops with an error naming
the holder, unless the lock is stale:
  - its pid is dead and it was taken on this host,
  - it was taken by an earlier incarnation of this same SLURM job (a requeue), or
  - its heartbeat is older than `stale_after_s` (a crashed run on another host);
a stale lock is taken over with a warning. The lock is removed when the run ends.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Optional
from megactllm.errors import UserError

LOCK_FILE = "run.lock"
log = logging.getLogger(__name__)


class RunLockError(UserError, RuntimeError):
    pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _me() -> dict:
    now = time.time()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": now,
        "heartbeat": now,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
    }


def describe(holder: dict) -> str:
    age = time.time() - float(holder.get("heartbeat", 0))
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("start", 0))))
    return f"pid {holder.get('pid')} on host {holder.get('host')}{job}, started {started}, last heartbeat {age:.0f} s ago"


def why_stale(holder: dict, stale_after_s: float) -> Optional[str]:
    """Why a lock held by `holder` may be taken over, or None when its holder may still be writing."""
    me = _me()
    if holder.get("host") == me["host"] and not _pid_alive(int(holder.get("pid", -1))):
        return "its process is gone"
    if (
        me["slurm_job_id"] is not None
        and holder.get("slurm_job_id") == me["slurm_job_id"]
        and int(holder.get("slurm_restart_count", 0)) < me["slurm_restart_count"]
    ):
        return "it was taken by an earlier run of this requeued SLURM job"
    if time.time() - float(holder.get("heartbeat", 0)) > stale_after_s:
        return f"its heartbeat is older than {stale_after_s:.0f} s"
    return None


class RunLock:
    """`with RunLock(save_dir):` or acquire()/release(); heartbeat every `heartbeat_s` meanwhile."""

    def __init__(self, directory: str, stale_after_s: float = 600.0, heartbeat_s: Optional[float] = None):
        self.path = Path(directory) / LOCK_FILE
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(1.0, min(30.0, stale_after_s / 4))
        self.record: Optional[dict] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ----------------------------------------------------------------- file
    def _read(self) -> Optional[dict]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, OSError) as e:
            # A holder writing its heartbeat is atomic (rename); garbage means a crash mid-creation.
            return {"host": "?", "pid": -1, "start": 0, "heartbeat": 0, "unreadable": str(e)}

    def _write(self, record: dict, exclusive: bool) -> bool:
        data = json.dumps(record)
        if exclusive:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(data)
            return True
        tmp = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.tmp")
        tmp.write_text(data)
        os.replace(tmp, self.path)
        return True

    def _mine(self, holder: Optional[dict]) -> bool:
        return bool(holder) and self.record is not None and all(
            holder.get(k) == self.record[k] for k in ("host", "pid", "start")
        )

    # ----------------------------------------------------------------- lock
    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.record = _me()
        if not self._write(self.record, exclusive=True):
            holder = self._read()
            reason = why_stale(holder, self.stale_after_s) if holder else "it vanished"
            if reason is None:
                raise RunLockError(
                    f"checkpoint directory {self.path.parent} is in use by another run ({describe(holder)}); "
                    f"stop that run or choose another train.save. A lock whose process is dead on this host, or "
                    f"whose heartbeat is older than {self.stale_after_s:.0f} s, is taken over automatically "
                    f"(lock file: {self.path})"
                )
            if holder:
                log.warning(f"taking over the stale lock {self.path} ({describe(holder)}): {reason}")
            self._write(self.record, exclusive=False)
            time.sleep(0.05)  # two runs taking over at once: the last rename wins, the other sees it
            if not self._mine(self._read()):
                raise RunLockError(f"lost the race for {self.path} to {describe(self._read() or {})}")
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self._mine(self._read()):
                log.warning(f"{self.path} was taken over by {describe(self._read() or {})}; heartbeat stopped")
                return
            self.record["heartbeat"] = time.time()
            self._write(self.record, exclusive=False)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._mine(self._read()):
            self.path.unlink(missing_ok=True)
        self.record = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def acquire_on_rank0(directory: Optional[str], stale_after_s: float) -> Optional[RunLock]:
    """Rank 0 takes the lock; every rank raises the same RunLockError when it cannot (a collective)."""
    import torch.distributed as dist

    lock, error = None, None
    rank = dist.get_rank() if dist.is_initialized() else 0
    if directory and rank == 0:
        try:
            lock = RunLock(directory, stale_after_s).acquire()
        except RunLockError as e:
            error = str(e)
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise RunLockError(error)
    return lock
