"""One writer per checkpoint directory.

The lock names its holder; a live holder refuses a second run with an error naming it; a dead
pid on this host, an old heartbeat, or an earlier run of the same requeued SLURM job is taken
over with a warning. A second real training run at a held `checkpoint.save` exits 2 naming the holder.
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

from megactllm.training.run.lock import LOCK_FILE, RunLock, RunLockError


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
    with caplog.at_level(logging.WARNING, logger="megactllm.training.run.lock"):
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
           *tiny_overrides(data, str(tmp_path), **{"checkpoint.save": f"{tmp_path}/ckpt", "train.duration": "2 iterations"})]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=torchrun_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: checkpoint directory {tmp_path / 'ckpt'} is in use by another run (pid {live_pid}" in proc.stderr
    assert not (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").exists()


# ----------------------------------------------------------------- issue 19 section 3: no two holders

def test_lock_appears_with_its_content_and_never_replaces(tmp_path, live_pid):
    """Created by linking a written temporary file: no empty window, an existing lock is never replaced."""
    import megactllm.training.run.lock as run_lock

    seen = []
    real_link = os.link

    def link_and_look(src, dst):
        seen.append(Path(src).read_text())  # what the lock name will show the moment it exists
        return real_link(src, dst)

    run_lock.os.link = link_and_look
    try:
        with RunLock(str(tmp_path / "a")):
            assert json.loads(seen[0])["pid"] == os.getpid()
        _holder(tmp_path / "b", pid=live_pid)
        before = (tmp_path / "b" / LOCK_FILE).read_bytes()
        with pytest.raises(RunLockError, match="in use by another run"):
            RunLock(str(tmp_path / "b")).acquire()
        assert (tmp_path / "b" / LOCK_FILE).read_bytes() == before
    finally:
        run_lock.os.link = real_link
    assert [p.name for p in (tmp_path / "b").iterdir()] == [LOCK_FILE]  # no temporary file left


@pytest.mark.parametrize("content", [b"", b'{"host": "x", "pi'])
def test_empty_or_unreadable_lock_is_held_until_its_mtime_is_stale(tmp_path, content):
    (tmp_path / LOCK_FILE).write_bytes(content)
    with pytest.raises(RunLockError, match="unreadable lock"):
        RunLock(str(tmp_path), stale_after_s=60).acquire()
    assert (tmp_path / LOCK_FILE).read_bytes() == content
    old = time.time() - 120
    os.utime(tmp_path / LOCK_FILE, (old, old))
    with RunLock(str(tmp_path), stale_after_s=60):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def _heartbeat(directory: Path, default: float) -> float:
    try:  # rewritten in place: a read may catch it half written
        return json.loads((directory / LOCK_FILE).read_text())["heartbeat"]
    except (ValueError, KeyError):
        return default


def test_heartbeat_retries_read_and_write_errors(tmp_path, caplog):
    lock = RunLock(str(tmp_path), heartbeat_s=0.02)
    failures = {"stat": 3, "write": 3}
    real_mine, real_write = lock._mine_now, lock._write_heartbeat

    def flaky_mine():
        if failures["stat"]:
            failures["stat"] -= 1
            raise OSError(5, "Input/output error")
        return real_mine()

    def flaky_write():
        if failures["write"]:
            failures["write"] -= 1
            raise OSError(28, "No space left on device")
        real_write()

    lock._mine_now, lock._write_heartbeat = flaky_mine, flaky_write
    with caplog.at_level(logging.WARNING, logger="megactllm.training.run.lock"):
        with lock:
            first = json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"]
            deadline = time.time() + 10
            while _heartbeat(tmp_path, first) <= first:
                assert time.time() < deadline, "the heartbeat gave up after an error"
                time.sleep(0.02)
            assert lock._thread.is_alive() and lock.lost is None and lock.still_held() is None
    assert failures == {"stat": 0, "write": 0}
    assert "retrying" in caplog.text and "taken over" not in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()


def _take_over(directory: Path, pid: int) -> None:
    """Another run's takeover as run_lock does it: move the file away, link its own in."""
    lock = directory / LOCK_FILE
    os.rename(lock, directory / "moved")
    tmp = directory / "theirs.tmp"
    tmp.write_text(json.dumps({"host": "node-elsewhere", "pid": pid, "start": time.time(), "heartbeat": time.time()}))
    os.link(tmp, lock)
    tmp.unlink()
    (directory / "moved").unlink()


def test_a_taken_over_lock_is_seen_lost_and_never_written_or_removed(tmp_path, caplog):
    from megactllm.training.run.lock import RunLockLostError, check_still_held

    lock = RunLock(str(tmp_path), heartbeat_s=0.02).acquire()
    check_still_held(lock, str(tmp_path))  # held: no error
    _take_over(tmp_path, pid=4242)
    theirs = (tmp_path / LOCK_FILE).read_bytes()
    with caplog.at_level(logging.WARNING, logger="megactllm.training.run.lock"):
        deadline = time.time() + 10
        while lock.lost is None:
            assert time.time() < deadline
            time.sleep(0.02)
    assert "node-elsewhere" in lock.lost
    with pytest.raises(RunLockLostError, match="leaves that run's files"):
        check_still_held(lock, str(tmp_path))
    time.sleep(0.1)
    lock.release()
    assert (tmp_path / LOCK_FILE).read_bytes() == theirs  # heartbeats and release left theirs alone


RACER = """
import json, sys, time
from megactllm.training.run.lock import RunLock, RunLockError
directory, start, stale = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lock = RunLock(directory, stale_after_s=stale, heartbeat_s=0.05)
while time.time() < start:
    pass
try:
    lock.acquire()
except RunLockError as e:
    print(json.dumps({"won": False, "error": str(e)}), flush=True)
    sys.exit(0)
time.sleep(1.0)  # hold it while the other one tries
print(json.dumps({"won": True, "still_held": lock.still_held()}), flush=True)
lock.release()
"""


@pytest.mark.parametrize("start_with", ["no lock", "a stale lock"])
def test_two_launches_racing_exactly_one_wins(tmp_path, start_with):
    for round_ in range(4):
        directory = tmp_path / f"round{round_}"
        if start_with == "a stale lock":
            _holder(directory, host="node-elsewhere", pid=1, heartbeat=time.time() - 3600)
        start = time.time() + 1.5  # both interpreters are up and spinning by then
        procs = [subprocess.Popen([sys.executable, "-c", RACER, str(directory), str(start), "60"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outcomes = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-2000:]
            outcomes.append(json.loads(out.strip().splitlines()[-1]))
        winners = [o for o in outcomes if o["won"]]
        assert len(winners) == 1, outcomes
        assert winners[0]["still_held"] is None, outcomes  # the winner was never displaced
        loser = next(o for o in outcomes if not o["won"])
        assert "in use by another run" in loser["error"] or "lost the race" in loser["error"], loser
        assert not (directory / LOCK_FILE).exists()


def _train_and_lose_the_lock(overrides, at_iteration):
    """Rank body: train; during iteration `at_iteration` another run takes the lock and starts writing."""
    from megactllm.config import load_config
    from megactllm.parallel import initialize_parallel
    from megactllm.training.trainer import Trainer
    from megactllm.training.run.lock import RunLockLostError

    cfg = load_config(None, overrides)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    trainer = Trainer(cfg)
    original = trainer.train_step

    def train_step():
        if trainer.rank == 0 and trainer.state.iteration + 1 == at_iteration:
            save = Path(cfg.checkpoint.save)
            _take_over(save, pid=4242)
            (save / "iter_0000004.partial").mkdir()
            (save / "iter_0000004.partial" / "theirs").write_text("the other run's write in flight")
        return original()

    trainer.train_step = train_step
    try:
        trainer.fit()
    except RunLockLostError as e:
        return {"error": str(e), "iteration": trainer.state.iteration}
    return {"error": None, "iteration": trainer.state.iteration}


def test_lost_lock_stops_every_rank_at_the_next_save_and_deletes_nothing_of_the_other_run(tmp_path):
    from megactllm.testing.distributed import run_distributed

    data = write_corpus(str(tmp_path / "corpus"), seed=11)
    save = tmp_path / "ckpt"
    overrides = tiny_overrides(data, str(tmp_path), **{
        "checkpoint.save": str(save), "checkpoint.interval": 2, "train.duration": "6 iterations"})
    results = run_distributed(_train_and_lose_the_lock, 2, overrides, 3, timeout=600)
    assert [r["iteration"] for r in results] == [4, 4]  # both ranks stop at the save boundary after the loss
    for r in results:
        assert r["error"] and "taken over by pid 4242 on host node-elsewhere" in r["error"], r
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert (save / "iter_0000004.partial" / "theirs").read_text() == "the other run's write in flight"
    assert not (save / "iter_0000004").exists()
    assert json.loads((save / LOCK_FILE).read_text())["pid"] == 4242  # theirs, not removed
