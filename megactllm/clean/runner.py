"""Runs stages over their units: locally with N processes, or one SLURM array task's share.

Task t of T takes units t, t+T, t+2T, ... of a stage; units with a completion marker are
skipped, so rerunning any command resumes where it stopped. A stage refuses to start until
the stage it reads from has finished every unit, naming what is missing.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from typing import Callable

from megactllm.errors import UserError

from . import stages
from .config import CleanConfig
from .progress import Progress
from .report import write_report
from .workdir import Workdir

STAGES = ("filter", "minhash", "lsh", "cluster", "dedup", "report")
_UNIT_FN: dict[str, Callable[[Workdir, int], dict]] = {
    "filter": stages.filter_unit, "minhash": stages.minhash_unit, "lsh": stages.lsh_unit,
    "cluster": stages.cluster_unit, "dedup": stages.dedup_unit,
}
_NEEDS = {"minhash": "filter", "lsh": "minhash", "cluster": "lsh", "dedup": "cluster", "report": "dedup"}


class StageNotReady(UserError, RuntimeError):
    pass


class CleanRunError(UserError, ValueError):
    """A stage name, task index or SLURM array that does not fit the run."""


def slurm_task() -> tuple[int, int] | None:
    """(task index, task count) of a SLURM array task, or None outside one."""
    env = os.environ
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    task_id = int(env["SLURM_ARRAY_TASK_ID"])
    lo = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    if "SLURM_ARRAY_TASK_COUNT" in env:
        count = int(env["SLURM_ARRAY_TASK_COUNT"])
    elif "SLURM_ARRAY_TASK_MAX" in env:
        count = int(env["SLURM_ARRAY_TASK_MAX"]) - lo + 1
    else:
        raise CleanRunError("SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor _MAX is: "
                            "launch with sbatch --array or pass --task-index and --num-tasks")
    return task_id - lo, count


def num_units(wd: Workdir, stage: str) -> int:
    if stage in ("filter", "minhash", "dedup"):
        return len(wd.shards())
    if stage == "lsh":
        return stages.lsh_units(wd)
    return 1


def _check_ready(wd: Workdir, stage: str) -> None:
    before = _NEEDS.get(stage)
    if before is None:
        return
    missing = wd.missing(before, range(num_units(wd, before)))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise StageNotReady(f"stage '{stage}' needs stage '{before}' finished, but {len(missing)} of its "
                            f"units are not done (units {shown}); run '{before}' first (or wait for its array job)")


def _die_with_parent() -> None:
    """Pool initializer: a worker gets SIGKILL when the runner dies, even by SIGKILL, so a
    killed run leaves no orphans writing into the work directory (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_unit(args: tuple[CleanConfig, str, int]) -> tuple[int, dict]:
    cfg, stage, unit = args
    wd = Workdir(cfg)
    result = _UNIT_FN[stage](wd, unit)
    wd.mark_done(stage, unit)
    return unit, result


def run_stage(cfg: CleanConfig, stage: str, task: tuple[int, int] | None = None,
              workers: int | None = None, log=sys.stderr) -> dict:
    """Run this task's share of a stage's units; returns {"done": [...], "skipped": [...]}."""
    if stage not in STAGES:
        raise CleanRunError(f"unknown stage '{stage}'; stages are {', '.join(STAGES)}")
    wd = Workdir(cfg)
    if stage == "filter":
        wd.prepare()
    _check_ready(wd, stage)
    if stage == "report":
        if task is None or task[0] == 0:
            paths = write_report(wd)
            print(f"report: {paths['markdown']}", file=log, flush=True)
        return {"done": [0], "skipped": []}
    index, count = task or (0, 1)
    if not 0 <= index < count:
        raise CleanRunError(f"task index {index} is outside [0, {count})")
    mine = list(range(num_units(wd, stage)))[index::count]
    todo = wd.missing(stage, mine)
    skipped = [u for u in mine if u not in todo]
    if skipped:
        print(f"{stage}: {len(skipped)} unit(s) already done, skipped", file=log, flush=True)
    workers = max(1, min(workers or cfg.run.workers, len(todo) or 1))
    total = None
    if stage == "filter":
        shards = wd.shards()
        total = sum(os.path.getsize(shards[u]) for u in todo)
    progress = Progress(f"{stage} [{len(todo)} units]", total, cfg.run.progress_interval_s, log)
    jobs = [(cfg, stage, u) for u in todo]
    finished = []
    if workers == 1:
        results = map(_run_unit, jobs)
        for unit, res in results:
            finished.append(unit)
            progress.update(res["docs"], res["bytes"])
    else:
        with mp.get_context("fork").Pool(workers, initializer=_die_with_parent) as pool:
            for unit, res in pool.imap_unordered(_run_unit, jobs):
                finished.append(unit)
                progress.update(res["docs"], res["bytes"])
    if todo:
        print(f"{stage}: finished {len(finished)} unit(s); " + progress.line(), file=log, flush=True)
    return {"done": sorted(finished), "skipped": skipped}


def run_all(cfg: CleanConfig, stages_to_run: tuple[str, ...] = STAGES, task: tuple[int, int] | None = None,
            workers: int | None = None, log=sys.stderr) -> None:
    for stage in stages_to_run:
        run_stage(cfg, stage, task, workers, log)
