"""Workers die with their launcher: SIGKILL of torchrun while it trains leaves no orphan worker
(megactllm.training.run.parent_death, PR_SET_PDEATHSIG), so a relaunch never trains beside them."""
import os
import signal
import subprocess
import time
from pathlib import Path

from train_utils import tiny_overrides, torchrun_command, torchrun_env, write_corpus


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_of_torchrun_leaves_no_orphan_workers(tmp_path):
    data = write_corpus(str(tmp_path / "corpus"), seed=8)
    overrides = tiny_overrides(data, str(tmp_path), **{"train.duration": "100000 iterations"})
    proc = subprocess.Popen(torchrun_command(2, overrides), env=torchrun_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "log" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None, "torchrun ended before training"
            assert time.monotonic() < deadline, "no training iterations within 240 s"
            time.sleep(0.5)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = [w for w in workers if _alive(w)]
    for w in orphans:  # clean up before failing
        os.kill(w, signal.SIGKILL)
    assert not orphans, f"workers {orphans} outlived their SIGKILLed torchrun"
