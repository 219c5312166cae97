"""One writer per checkpoint directory.

The lock names its holder; a live holder refuses a second run with an error naming it; a dead
pid on this host, an old heartbeat, or an earlier run of the same requeued SLURM job is taken
over with a warning. A second real training run at a held `train.save` exits 2 naming the holder.
"""
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_utils import tiny_overrides, torchrun_env, write_corpus

from megactllm.training.run_lock import LOCK_FILE, RunLock, RunLockError


def _holder(directory: Path, **fields) -> None:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "start": time.time(), "heartbeat": time.time()}
    record.update(fields)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LOCK_FILE).write_text(json.dumps(record))


@pytest.fixture
def live_pid():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_lock_names_its_holder_and_is_removed_on_release(tmp_path):
    with RunLock(str(tmp_path), heartbeat_s=0.05) as lock:
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        first = record["heartbeat"]
        time.sleep(0.3)
        assert json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"] > first
        assert lock.record is not None
    assert not (tmp_path / LOCK_FILE).exists()


def test_live_holder_refuses_a_second_run(tmp_path, live_pid):
    _holder(tmp_path, pid=live_pid, slurm_job_id="4242")
    with pytest.raises(RunLockError) as err:
        RunLock(str(tmp_path)).acquire()
    message = str(err.value)
    assert f"pid {live_pid} on host {socket.gethostname()}" in message and "SLURM job 4242" in message
    assert str(tmp_path) in message
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == live_pid  # untouched


def test_other_host_with_a_fresh_heartbeat_is_refused(tmp_path):
    _holder(tmp_path, host="node-elsewhere", pid=1)
    with pytest.raises(RunLockError, match="node-elsewhere"):
        RunLock(str(tmp_path), stale_after_s=60).acquire()


@pytest.mark.parametrize("case", ["dead pid", "old heartbeat", "requeued job"])
def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog, monkeypatch, case):
    if case == "dead pid":
        _holder(tmp_path, pid=_dead_pid())
        expected = "process is gone"
    elif case == "old heartbeat":
        _holder(tmp_path, host="node-elsewhere", pid=1, heartbeat=time.time() - 120)
        expected = "heartbeat is older than 60 s"
    else:
        _holder(tmp_path, host="node-elsewhere", pid=1, slurm_job_id="77", slurm_restart_count=0)
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        expected = "earlier run of this requeued SLURM job"
    with caplog.at_level(logging.WARNING, logger="megactllm.training.run_lock"):
        lock = RunLock(str(tmp_path), stale_after_s=60).acquire()
    try:
        assert expected in caplog.text and "taking over the stale lock" in caplog.text
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def test_second_training_run_at_a_held_checkpoint_dir_exits_naming_the_holder(tmp_path, live_pid):
    data = write_corpus(str(tmp_path / "corpus"), seed=7)
    _holder(tmp_path / "ckpt", pid=live_pid)
    cmd = [sys.executable, "-m", "megactllm.train",
           *tiny_overrides(data, str(tmp_path), **{"train.save": f"{tmp_path}/ckpt", "train.train_iters": 2})]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=torchrun_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: checkpoint directory {tmp_path / 'ckpt'} is in use by another run (pid {live_pid}" in proc.stderr
    assert not (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").exists()
