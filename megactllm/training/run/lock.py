"""One writer per checkpoint directory: `{checkpoint.save}/run.lock`, taken by rank 0 before training.

The lock file names its holder (host, pid, start time, SLURM job) and carries a heartbeat that a
background thread refreshes. A second run aiming at the same directory stops with an error naming
the holder, unless the lock is stale:
  - its pid is dead and it was taken on this host,
  - it was taken by an earlier incarnation of this same SLURM job (a requeue), or
  - its heartbeat is older than `stale_after_s` (a crashed run on another host); a lock that is
    empty or unreadable counts as held until its file's mtime is that old;
a stale lock is taken over with a warning. The lock is removed when the run ends.

Why it cannot be held by two runs:
  - the lock appears with its content at once: a temporary file is written, then hard-linked to
    `run.lock`, which fails when the name exists (a link never replaces);
  - the holder is the file's inode: the holder keeps it open and compares inodes, so a takeover
    (the stale file renamed away, a new one linked in) is seen for what it is;
  - taking over renames the stale file away and checks it moved the very file judged stale;
    when it moved another (fresh) lock, it links it back;
  - a holder that finds its lock gone or replaced has lost it: `check_still_held` stops every rank
    at the next save boundary, before anything in the directory is written or deleted.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

from megactllm.errors import UserError

LOCK_FILE = "run.lock"
TAKEOVER_ATTEMPTS = 3
log = logging.getLogger(__name__)


class RunLockError(UserError, RuntimeError):
    pass


class RunLockLostError(RunLockError):
    """Another run took this run's lock: this run stops before it writes or deletes anything more."""


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
    if holder.get("unreadable"):
        return f"an unreadable lock ({holder['unreadable']}), last written {time.time() - holder['mtime']:.0f} s ago"
    age = time.time() - float(holder.get("heartbeat", 0))
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("start", 0))))
    return f"pid {holder.get('pid')} on host {holder.get('host')}{job}, started {started}, last heartbeat {age:.0f} s ago"


def why_stale(holder: dict, stale_after_s: float) -> Optional[str]:
    """Why a lock held by `holder` may be taken over, or None when its holder may still be writing."""
    if holder.get("unreadable"):
        # Being written, or left by a crash: only its age can tell.
        if time.time() - holder["mtime"] > stale_after_s:
            return f"it is unreadable and was last written more than {stale_after_s:.0f} s ago"
        return None
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


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class RunLock:
    """`with RunLock(save_dir):` or acquire()/release(); heartbeat every `heartbeat_s` meanwhile."""

    def __init__(self, directory: str, stale_after_s: float = 600.0, heartbeat_s: Optional[float] = None):
        self.path = Path(directory) / LOCK_FILE
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(1.0, min(30.0, stale_after_s / 4))
        self.record: Optional[dict] = None
        self.lost: Optional[str] = None  # why the lock is no longer ours, once the heartbeat saw it
        self._fd: Optional[int] = None   # our lock file, kept open: its inode identifies the holder
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ----------------------------------------------------------------- file
    def _read(self) -> Optional[tuple[dict, bytes, tuple]]:
        """(holder, raw bytes, inode) of the lock file now, or None when there is none."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                raw = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            try:
                mtime = os.stat(self.path).st_mtime
            except OSError:
                mtime = time.time()
            return {"unreadable": str(e), "mtime": mtime}, b"", (-1, -1)
        try:
            holder = json.loads(raw)
            if not isinstance(holder, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            # Empty or half written: a run creating it now, or one that crashed while writing.
            holder = {"unreadable": f"{'empty' if not raw else e}", "mtime": st.st_mtime}
        return holder, raw, _identity(st)

    def _create(self, record: dict) -> bool:
        """Write the record to a temporary file and link it to the lock name; False when one exists."""
        tmp = self.path.with_name(f"{LOCK_FILE}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, json.dumps(record).encode())
            os.fsync(fd)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                os.close(fd)
                return False
            except OSError as e:
                os.close(fd)
                raise RunLockError(
                    f"cannot create {self.path} (hard links unsupported there?): {e}; put checkpoint.save on a "
                    f"file system with hard links (NFS, Lustre, GPFS and local disks have them)"
                ) from None
        finally:
            os.unlink(tmp)
        self._fd = fd
        return True

    def _remove_stale(self, seen: bytes, identity: tuple) -> None:
        """Move the stale lock away, unless what moved is not the file judged stale (then put it back)."""
        grave = self.path.with_name(f"{LOCK_FILE}.stale.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return  # another run removed it first; the next attempt sees what is there now
        try:
            same = _identity(os.stat(grave)) == identity and grave.read_bytes() == seen
        except OSError:
            same = False
        if not same:
            try:
                os.link(grave, self.path)  # a fresh lock, taken meanwhile: its holder keeps it
            except FileExistsError:
                pass  # a third run linked first: that holder sees its lock replaced and stops
        grave.unlink(missing_ok=True)

    def _mine_now(self) -> Optional[str]:
        """None while the lock file is ours; else why not. Raises OSError when it cannot tell."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"{self.path} was removed"
        if self._fd is None or _identity(st) != _identity(os.fstat(self._fd)):
            now = self._read()
            return f"{self.path} was taken over by {describe(now[0]) if now else 'nobody'}"
        return None

    def _write_heartbeat(self) -> None:
        self.record["heartbeat"] = time.time()
        data = json.dumps(self.record).encode()
        # In place, through our own descriptor: a taken-over lock is another inode, never touched.
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    # ----------------------------------------------------------------- lock
    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.record = _me()
        self.lost = None
        for _ in range(TAKEOVER_ATTEMPTS):
            if self._create(self.record):
                break
            found = self._read()
            if found is None:
                continue  # released meanwhile
            holder, raw, identity = found
            reason = why_stale(holder, self.stale_after_s)
            if reason is None:
                raise RunLockError(
                    f"checkpoint directory {self.path.parent} is in use by another run ({describe(holder)}); "
                    f"stop that run or choose another checkpoint.save. A lock whose process is dead on this host, or "
                    f"whose heartbeat is older than {self.stale_after_s:.0f} s, is taken over automatically "
                    f"(lock file: {self.path})"
                )
            log.warning(f"taking over the stale lock {self.path} ({describe(holder)}): {reason}")
            self._remove_stale(raw, identity)
        else:
            found = self._read()
            raise RunLockError(
                f"lost the race for {self.path} to {describe(found[0]) if found else 'another run'}; "
                f"another run is starting in {self.path.parent}"
            )
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        failing = False
        while not self._stop.wait(self.heartbeat_s):
            try:
                lost = self._mine_now()
                if lost is None:
                    self._write_heartbeat()
            except OSError as e:  # a network file system's hiccup: try again at the next beat
                if not failing:
                    log.warning(f"run lock heartbeat on {self.path} failed ({e}); retrying")
                failing = True
                continue
            if failing:
                log.warning(f"run lock heartbeat on {self.path} works again")
                failing = False
            if lost is not None:
                self.lost = lost
                log.warning(f"{lost}; this run stops at its next checkpoint save")
                return

    def still_held(self) -> Optional[str]:
        """None while this run holds the lock; else why it lost it (checked on the file now)."""
        if self.lost is not None:
            return self.lost
        try:
            return self._mine_now()
        except OSError:
            return None  # cannot tell now: the heartbeat keeps trying, and the mtime stays fresh

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            try:
                if self._mine_now() is None:
                    self.path.unlink(missing_ok=True)
            except OSError as e:
                log.warning(f"could not remove {self.path}: {e}")
            os.close(self._fd)
            self._fd = None
        self.record = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _agree(error: Optional[str]) -> Optional[str]:
    """Rank 0's answer on every rank (a collective when there are several)."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    return error


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def acquire_on_rank0(directory: Optional[str], stale_after_s: float) -> Optional[RunLock]:
    """Rank 0 takes the lock; every rank raises the same RunLockError when it cannot (a collective)."""
    lock, error = None, None
    if directory and _rank() == 0:
        try:
            lock = RunLock(directory, stale_after_s).acquire()
        except RunLockError as e:
            error = str(e)
    error = _agree(error)
    if error:
        raise RunLockError(error)
    return lock


def check_still_held(lock: Optional[RunLock], directory: Optional[str]) -> None:
    """At a save boundary, on every rank: raise RunLockLostError everywhere when rank 0 lost the lock."""
    lost = lock.still_held() if lock is not None else None
    lost = _agree(lost)
    if lost:
        raise RunLockLostError(
            f"{lost}: another run now writes checkpoints to {directory}. This run stops without saving, "
            f"and leaves that run's files (its .partial directories included) alone; give one of the runs "
            f"another checkpoint.save"
        )
