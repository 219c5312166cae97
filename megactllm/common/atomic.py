"""Outputs that appear complete or not at all.

A file is written to a temporary name beside its destination, flushed to disk and renamed over it
(`os.replace` is atomic within a directory), so a reader or a crash never sees half a file. A
directory is built as `<out>.partial-<pid>` and renamed into place after its last file is closed;
an interrupted run leaves only that `.partial-*` directory, which the next run for the same
destination removes once its owner is gone.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Iterator, Optional

from megactllm.errors import UserError


class OutputExistsError(UserError, FileExistsError):
    """The output directory exists and the caller did not ask to overwrite it."""


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (its entries), so a rename after it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_cached(path: str | os.PathLike) -> None:
    """Ask the kernel to drop a synced file's pages from its cache (a no-op where it cannot).

    A converter writes more than memory holds and never reads it back: its pages would only evict
    what other work uses. Measured here, a reader of just-written pages was also slower than one
    reading them back from disk (an export right after an import: 9.4 s, and 5.1 s after dropping)."""
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _temporary_name(path: Path) -> Path:
    # Per process and per call: SLURM array tasks and threads may write the same destination.
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(3).hex()}.tmp")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: Optional[str] = "utf-8",
                 fsync: bool = True) -> Iterator[IO]:
    """Yield a file open on a temporary name beside `path`; on success it replaces `path`.

    The parent directory is created. On an exception the temporary file is removed and `path` is
    left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    binary = "b" in mode
    try:
        with open(tmp, mode.replace("w", "x"), encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    with atomic_write(path, "w", fsync=fsync) as f:
        f.write(text)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)


def write_json_atomic(path: str | os.PathLike, obj: Any, fsync: bool = True, **dump_options: Any) -> None:
    """One JSON document, written atomically (UTF-8 kept as is unless `ensure_ascii=True` is passed)."""
    dump_options.setdefault("ensure_ascii", False)
    write_text_atomic(path, json.dumps(obj, **dump_options), fsync=fsync)


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


def publish_directory(staging: Path, final: Path) -> None:
    """Rename a finished staging directory to `final`, replacing what was there, durably."""
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


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, overwrite: bool = False,
                      exists_error: type = OutputExistsError) -> Iterator[Path]:
    """Yield a staging directory; on success it becomes `out_dir`, on failure it is removed.

    An existing `out_dir` is refused with `exists_error` (a package's own UserError) unless
    `overwrite` is set.
    """
    final = Path(out_dir).absolute()
    if final.exists() and not overwrite:
        raise exists_error(f"{final} already exists; choose another output directory or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(final.name + ".partial-*"):
        if not _owner_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    staging = final.with_name(f"{final.name}.partial-{os.getpid()}")
    staging.mkdir()
    try:
        yield staging
        publish_directory(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
