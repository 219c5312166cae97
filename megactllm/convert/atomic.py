"""Write a directory so that it appears complete or not at all.

Everything is written into `<out>.partial-<pid>` beside the destination and renamed into place
only after the last file is closed; an interrupted conversion leaves that `.partial-*` directory
(never something at `<out>`), and the next run removes stale ones for the same destination.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from megactllm.convert.errors import ConversionError


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (its entries), so a rename after it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _owner_alive(staging: Path) -> bool:
    """Whether the process that named this staging directory still runs (then it is not stale)."""
    try:
        pid = int(staging.name.rsplit("-", 1)[1])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, overwrite: bool = False):
    """Yield a staging directory; on success it becomes `out_dir`, on failure it is removed."""
    final = Path(out_dir).absolute()
    if final.exists() and not overwrite:
        raise ConversionError(f"{final} already exists; choose another output directory or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(final.name + ".partial-*"):
        if not _owner_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    staging = final.with_name(f"{final.name}.partial-{os.getpid()}")
    staging.mkdir()
    try:
        yield staging
        fsync_path(staging)
        if final.exists():
            # Move the old one aside first so a crash between the two renames loses nothing.
            old = final.with_name(f"{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old)
        else:
            os.replace(staging, final)
        fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
