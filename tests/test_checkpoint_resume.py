"""A run killed with SIGKILL and relaunched with the same command continues exactly.

Two torchrun processes (PP=2 with the distributed optimizer, so the checkpoint is written by two
ranks through megatron-core dist_checkpointing) train 16 iterations and save every 4. The run is killed (SIGKILL to the whole
process group) as soon as its first checkpoint is published, then launched again with the
identical command: it resumes from the latest pointer (model, Adam state, LR schedule, consumed
samples, RNG) and its per-iteration losses equal those of an uninterrupted run. Equality is
exact in practice (same layout, same CPU kernels); the assertion allows 1e-6.

With checkpoint.async_save the run is killed while a background writer is still writing iteration 8
(held there by fault injection) and training has moved past it: the latest pointer still names
iteration 4, iteration 8 exists only as an unloadable `.partial`, and the relaunched run (async
again) resumes from 4 with the reference's losses and publishes complete checkpoints.
"""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from train_utils import (
    read_losses,
    tiny_overrides,
    torchrun_command,
    torchrun_env,
    write_corpus,
)

ITERS = 16


def _overrides(data, run_dir, **extra):
    return tiny_overrides(
        data, str(run_dir),
        **extra,
        **{
            "train.duration": f"{ITERS} iterations",
            "checkpoint.save": f"{run_dir}/ckpt",
            "checkpoint.load": f"{run_dir}/ckpt",
            "checkpoint.interval": 4,
            "parallel.pipeline_model_parallel_size": 2,
            "parallel.use_distributed_optimizer": "true",
        },
    )


def _descendants(pid: int) -> list[int]:
    """Child processes, recursively, from /proc (torchrun starts its workers in their own sessions)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _sigkill_tree(pid: int) -> None:
    """SIGKILL the launcher and every worker at once, as a node failure would."""
    for p in [pid] + _descendants(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run(cmd, log_path):
    with open(log_path, "w") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=torchrun_env(), timeout=300).returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The corpus and the losses of an uninterrupted run (synchronous saves)."""
    tmp_path = tmp_path_factory.mktemp("reference")
    data = write_corpus(str(tmp_path / "corpus"), seed=0)
    reference_dir = tmp_path / "reference"
    assert _run(torchrun_command(2, _overrides(data, reference_dir)), tmp_path / "reference.log") == 0
    losses = read_losses(f"{reference_dir}/log")
    assert sorted(losses) == list(range(1, ITERS + 1))
    return data, losses


def _assert_resumed_losses(run_dir, saved, reference, log):
    assert f"resumed from {run_dir}/ckpt/iter_{saved:07d}" in log, log[-3000:]
    assert "RNG state" not in log, "the RNG state should be restored at the same layout"
    resumed = read_losses(f"{run_dir}/log")  # later records of a repeated iteration win
    assert sorted(resumed) == sorted(reference)
    for it in reference:
        assert resumed[it] == pytest.approx(reference[it], abs=1e-6), f"iteration {it} (resumed from {saved})"


def test_resume_after_sigkill_gives_identical_losses(tmp_path, reference):
    data, reference = reference

    run_dir = tmp_path / "killed"
    pointer = run_dir / "ckpt" / "latest_checkpointed_iteration.txt"
    cmd = torchrun_command(2, _overrides(data, run_dir))
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=torchrun_env(), start_new_session=True)
        deadline = time.time() + 240
        while not pointer.is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        _sigkill_tree(proc.pid)
        proc.wait()
    assert pointer.is_file(), (tmp_path / "killed.log").read_text()[-3000:]
    killed_at = max(read_losses(f"{run_dir}/log"))
    assert killed_at < ITERS, f"the run finished (iteration {killed_at}) before it could be killed"
    saved = int(pointer.read_text())

    assert _run(cmd, tmp_path / "resumed.log") == 0
    _assert_resumed_losses(run_dir, saved, reference, (tmp_path / "resumed.log").read_text())


def test_sigkill_during_background_write_leaves_the_previous_checkpoint(tmp_path, reference):
    from megactllm.checkpoint.async_save import SLOW_WRITE_ENV, check_storage_index
    from megactllm.checkpoint import CheckpointError, resolve_checkpoint_dir

    data, reference = reference
    run_dir = tmp_path / "killed"
    ckpt = run_dir / "ckpt"
    pointer = ckpt / "latest_checkpointed_iteration.txt"
    in_flight = ckpt / "iter_0000008.partial"
    cmd = torchrun_command(2, _overrides(data, run_dir, **{"checkpoint.async_save": "true"}))
    env = torchrun_env()
    env[SLOW_WRITE_ENV] = "iter_0000008:120"  # the writer of iteration 8 holds until the kill
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 240

        def training_moved_on():  # past the save at 8 while its writer is still at work
            return in_flight.is_dir() and max(read_losses(f"{run_dir}/log") or [0]) >= 10

        while not training_moved_on() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        _sigkill_tree(proc.pid)
        proc.wait()
    assert training_moved_on(), (tmp_path / "killed.log").read_text()[-3000:]
    assert pointer.read_text() == "4", "the pointer moved before the background write finished"
    assert not (ckpt / "iter_0000008").exists()
    assert not (in_flight / "megactllm.json").exists()
    with pytest.raises(CheckpointError):
        resolve_checkpoint_dir(in_flight)

    assert _run(cmd, tmp_path / "resumed.log") == 0  # no fault injection: every write completes
    log = (tmp_path / "resumed.log").read_text()
    _assert_resumed_losses(run_dir, 4, reference, log)
    assert "(written in the background)" in log
    assert pointer.read_text() == str(ITERS)
    assert not list(ckpt.glob("*.partial")), "a relaunch clears the stale partial and publishes every save"
    for it in (8, 12, 16):
        for part in ("model", "optimizer"):
            check_storage_index(ckpt / f"iter_{it:07d}" / part)
