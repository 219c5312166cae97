"""A scheduled run killed with SIGKILL inside its second phase and relaunched continues exactly.

One torchrun process trains 24 iterations, phase 'warm' for 1-4 and 'decay' after, saving every 3.
It is killed once a checkpoint inside phase 2 is published; the relaunch (same command) resumes
inside phase 2 and its losses equal an uninterrupted run's. A run resumed from iteration 3 (phase
1) crosses the boundary and matches too. Relaunching with other weights is refused by name.
"""
import json

import pytest
from blend_utils import schedule_override, scheduled_overrides, write_corpora
from test_checkpoint_resume import _run, _sigkill_tree
from train_utils import read_losses, torchrun_command, torchrun_env

ITERS = 24
BOUNDARY = 4


def _overrides(corpora, run_dir, **extra):
    return scheduled_overrides(
        corpora, str(run_dir), BOUNDARY,
        **{"train.duration": f"{ITERS} iterations", "checkpoint.save": f"{run_dir}/ckpt", "checkpoint.load": f"{run_dir}/ckpt",
           "checkpoint.interval": 3, **extra},
    )


def test_sigkill_inside_phase_two_then_relaunch_gives_identical_losses(tmp_path):
    import subprocess
    import time

    corpora = write_corpora(str(tmp_path))
    reference_dir = tmp_path / "reference"
    assert _run(torchrun_command(1, _overrides(corpora, reference_dir, **{"checkpoint.save": "null", "checkpoint.load": "null"})),
                tmp_path / "reference.log") == 0
    reference = read_losses(f"{reference_dir}/log")
    assert sorted(reference) == list(range(1, ITERS + 1))

    run_dir = tmp_path / "killed"
    pointer = run_dir / "ckpt" / "latest_checkpointed_iteration.txt"
    cmd = torchrun_command(1, _overrides(corpora, run_dir))
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=torchrun_env(), start_new_session=True)
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            if pointer.is_file() and pointer.read_text().strip() and int(pointer.read_text()) > BOUNDARY:
                break
            time.sleep(0.02)
        _sigkill_tree(proc.pid)
        proc.wait()
    saved = int(pointer.read_text())
    killed_at = max(read_losses(f"{run_dir}/log"))
    assert BOUNDARY < saved <= killed_at < ITERS, f"killed at {killed_at}, checkpoint {saved}: not inside phase 2"

    assert _run(cmd, tmp_path / "resumed.log") == 0
    log = (tmp_path / "resumed.log").read_text()
    assert f"resumed from {run_dir}/ckpt/iter_{saved:07d}" in log, log[-3000:]
    assert f"blend phase 2/2 decay continues at iteration {saved + 1}" in log, log[-3000:]
    resumed = read_losses(f"{run_dir}/log")
    assert sorted(resumed) == sorted(reference)
    for it in reference:
        assert resumed[it] == pytest.approx(reference[it], abs=1e-6), f"iteration {it} (resumed from {saved})"

    # From iteration 3 (phase 1) the resumed run crosses the boundary after 4 exactly as the reference did.
    across = tmp_path / "across"
    cmd = torchrun_command(1, _overrides(corpora, across, **{"checkpoint.load": f"{run_dir}/ckpt/iter_0000003"}))
    assert _run(cmd, tmp_path / "across.log") == 0
    log = (tmp_path / "across.log").read_text()
    assert "blend phase 1/2 warm continues at iteration 4" in log, log[-3000:]
    assert f"blend phase 2/2 decay begins at iteration {BOUNDARY + 1}" in log, log[-3000:]
    crossed = read_losses(f"{across}/log")
    assert sorted(crossed) == list(range(4, ITERS + 1))
    for it in crossed:
        assert crossed[it] == pytest.approx(reference[it], abs=1e-6), f"iteration {it} (resumed from 3)"

    # Other weights in phase 2 under the same checkpoint: a named error before any step.
    changed = [o for o in _overrides(corpora, run_dir) if not o.startswith("data.blend_schedule=")]
    changed.append(schedule_override(corpora, BOUNDARY, second=(0.6, 0.2, 0.2)))
    assert _run(torchrun_command(1, changed), tmp_path / "changed.log") != 0
    log = (tmp_path / "changed.log").read_text()
    assert "the data blend schedule differs" in log, log[-3000:]
    assert "phase 2: checkpoint" in log and "allow_blend_schedule_change" in log
    records = [json.loads(line) for line in open(run_dir / "log" / "metrics.jsonl")]
    assert max(r["iteration"] for r in records) == ITERS, "the refused run must not train"
