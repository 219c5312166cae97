"""The local two-node SLURM cluster (scripts/local_slurm.sh) as seen by tests: find it, submit, wait.

Tests under it skip with a message when no cluster answers, except in CI (the `CI` variable set),
where a missing cluster is a failure: CI brings it up before the tests.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

DEFAULT_CONF = Path(os.environ.get("LOCAL_SLURM_DIR", "/tmp/megactllm-slurm")) / "slurm.conf"


def cluster_env() -> dict:
    """Environment for sbatch/scontrol pointing at the local cluster; skips (or fails in CI) without one."""
    conf = os.environ.get("SLURM_CONF") or str(DEFAULT_CONF)
    env = dict(os.environ, SLURM_CONF=conf, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    why = None
    if not Path(conf).is_file():
        why = f"no SLURM config at {conf}"
    else:
        try:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=env, capture_output=True, text=True, timeout=30)
            nodes = dict(line.split() for line in out.stdout.splitlines() if line.strip())
            if out.returncode or len(nodes) < 2:
                why = f"sinfo found no two-node cluster ({out.stderr.strip() or out.stdout.strip()})"
        except (OSError, subprocess.SubprocessError) as e:
            why = f"sinfo failed: {e}"
    if why:
        message = f"local SLURM cluster not running ({why}); start it with `scripts/local_slurm.sh up`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return env


def sbatch(args: list[str], env: dict, cwd: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"sbatch {args} failed: {out.stderr}"
    return out.stdout.strip().split(";")[0]


def job_info(job_id: str, env: dict) -> dict:
    out = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True, timeout=30)
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def wait_job(job_id: str, env: dict, timeout: float, until=None, log: Path | None = None) -> dict:
    """Poll until the job reaches a final state (or `until(info)` is true); returns its scontrol record."""
    deadline = time.monotonic() + timeout
    while True:
        info = job_info(job_id, env)
        if (until(info) if until else info.get("JobState") in FINAL_STATES):
            return info
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            subprocess.run(["scancel", job_id], env=env)
            raise AssertionError(f"job {job_id} not done after {timeout} s: {info}\n{tail}")
        time.sleep(1)
