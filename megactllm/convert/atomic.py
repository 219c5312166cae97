"""Conversion outputs appear complete or not at all (common.atomic's directory, refused with ConversionError).

A long conversion may also resume: `resumable_output_dir` keeps its staging directory
(`<out>.resume`, never mistaken for a finished output) when the run dies, together with the plan
it was working to; the next run with the same plan continues in it, any other plan starts over.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from megactllm.common.atomic import (
    atomic_output_dir as _atomic_output_dir,
    publish_directory,
    write_text_atomic,
)
from megactllm.convert.errors import ConversionError
from megactllm.errors import UserError

PLAN_FILE = ".conversion-plan.json"
OWNER_FILE = ".conversion-owner"


def atomic_output_dir(out_dir: str | os.PathLike, overwrite: bool = False):
    """Yield a staging directory that becomes `out_dir` on success; an existing one is a ConversionError."""
    return _atomic_output_dir(out_dir, overwrite=overwrite, exists_error=ConversionError)


def _owner(staging: Path) -> int | None:
    try:
        return int((staging / OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def resumable_output_dir(out_dir: str | os.PathLike, plan: dict, overwrite: bool = False) -> Iterator[tuple[Path, bool]]:
    """Yield (staging directory, resumed); on success it becomes `out_dir`; interrupted or crashed, it
    stays for a rerun (a UserError, bad input, removes it).

    `plan` (JSON) names everything the output depends on (inputs, their sizes and times, options):
    a staging directory left by a run with another plan is removed, not continued. Two runs for one
    output at once are refused. The caller writes its own record of finished work inside.
    """
    final = Path(out_dir).absolute()
    if final.exists() and not overwrite:
        raise ConversionError(f"{final} already exists; choose another output directory or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(final.name + ".resume")
    wanted = json.dumps(plan, sort_keys=True, default=str)
    resumed = False
    if staging.exists():
        owner = _owner(staging)
        if owner is not None and owner != os.getpid() and _alive(owner):
            raise ConversionError(f"{staging} is being written by process {owner}; wait for it or stop it first")
        plan_file = staging / PLAN_FILE
        if plan_file.is_file() and plan_file.read_text(encoding="utf-8") == wanted:
            resumed = True
        else:
            shutil.rmtree(staging)
    if not resumed:
        staging.mkdir()
        write_text_atomic(staging / PLAN_FILE, wanted)
    write_text_atomic(staging / OWNER_FILE, str(os.getpid()))
    try:
        yield staging, resumed
    except UserError:
        # Bad input or options: a rerun cannot continue this; an interruption or a crash keeps it.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (staging / PLAN_FILE).unlink()
    (staging / OWNER_FILE).unlink()
    publish_directory(staging, final)


def file_fingerprint(paths) -> list:
    """(name, size, mtime) of input files: a plan changes when an input does."""
    out = []
    for p in sorted(Path(p) for p in paths):
        st = p.stat()
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out
