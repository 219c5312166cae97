"""A save that does not fit: foreseen from the previous save's size, or recognised when it happens.

A full disk surfaces in many shapes: OSError(ENOSPC) from a plain write, torch's zip writer's
`[enforce fail at inline_container.cc] unexpected pos ...` (torch.save), or a dist_checkpointing
write failure wrapping either. The exception chain is searched for ENOSPC first; torch's message
counts only when the filesystem is indeed (nearly) full.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Optional

GIB = 1 << 30
# What "full" means after a failed write: less room than one more block of the writers.
NEARLY_FULL_BYTES = 1 << 20


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 100 or n == 0 else f"{n / GIB:.4f} GiB"


def free_bytes(path: str | os.PathLike) -> int:
    """Free space (for this user) on the filesystem that holds path, or would hold it."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def directory_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _chain(error: BaseException):
    seen = set()
    todo = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
        # torch.distributed.checkpoint's CheckpointException keeps each rank's failure in .failures
        failures = getattr(e, "failures", None)
        if isinstance(failures, dict):  # values: exceptions, or (exception, traceback) pairs
            for f in failures.values():
                todo.append(f[0] if isinstance(f, tuple) and f else f if isinstance(f, BaseException) else None)
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]


def is_out_of_space(error: BaseException, directory: Path) -> bool:
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
    text = " ".join(str(e) for e in _chain(error))
    return "unexpected pos" in text and free_bytes(directory) < NEARLY_FULL_BYTES


def out_of_space_message(final: Path, previous: Optional[tuple[int, int]], free: int, before: bool) -> str:
    """`previous` is (iteration, bytes) of the last complete checkpoint in the directory, if any."""
    took = f"the last save took {gib(previous[1])}" if previous else "no earlier save to compare"
    last = f"the last complete checkpoint is iter_{previous[0]:07d}" if previous else "there is no complete checkpoint yet"
    what = "not enough space on device to save" if before else "no space left on device while saving"
    return f"{what} {final.name} to {final.parent} ({took}; {gib(free)} free); {last}"
