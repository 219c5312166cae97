"""Stopping on a scheduler's signal or a wall-clock budget, with every rank agreeing (no SLURM needed).

- One rank of two (DP=2) gets SIGUSR1 during iteration 3; the other gets nothing. Both stop after
  iteration 3 and both ranks' parts of the iteration-3 checkpoint are written.
- `run.exit_duration_minutes`: `python -m megactllm.train`'s main stops after the first
  iteration, saves, returns 75 and writes "75 exit_duration_minutes 1" to $MEGACTLLM_EXIT_STATUS.
"""
import os
import signal
from pathlib import Path

from train_utils import tiny_overrides, write_corpus

from megactllm.testing.distributed import run_distributed

ITERS = 5


def _train(overrides, signal_rank=None, at_iteration=None):
    """Rank body: train; `signal_rank` sends itself SIGUSR1 inside iteration `at_iteration`'s step."""
    from megactllm.config import load_config
    from megactllm.parallel import initialize_parallel
    from megactllm.training.run import signals as exit_signals
    from megactllm.training.trainer import Trainer

    exit_signals.reset()
    exit_signals.install()
    original = Trainer.train_step

    def train_step(self):
        if self.rank == signal_rank and self.state.iteration + 1 == at_iteration:
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self)

    Trainer.train_step = train_step
    cfg = load_config(None, overrides)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    result = Trainer(cfg).fit()
    return {"losses": result.losses, "iteration": result.state.iteration, "stop": result.stop_reason}


def _main(argv):
    from megactllm.training.main import main

    return main(argv)


def test_one_rank_signalled_all_stop_at_the_same_iteration_with_a_checkpoint(tmp_path):
    data = write_corpus(str(tmp_path / "corpus"), seed=5)
    ckpt = tmp_path / "ckpt"
    overrides = tiny_overrides(data, str(tmp_path), **{"train.duration": f"{ITERS} iterations", "checkpoint.save": ckpt, "checkpoint.load": ckpt})
    stopped = run_distributed(_train, 2, overrides, 1, 3)
    assert [r["iteration"] for r in stopped] == [3, 3]
    assert [r["stop"] for r in stopped] == ["SIGUSR1", "SIGUSR1"]  # rank 0 got no signal, yet agrees
    assert sorted(stopped[0]["losses"]) == [1, 2, 3]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert sorted(p.name for p in (ckpt / "iter_0000003" / "rng").iterdir()) == ["rank_00000.pt", "rank_00001.pt"]
    assert not (ckpt / "run.lock").exists()  # released at the end
    # Resuming it ends with the losses of an uninterrupted run: tests/test_slurm_pretrain.py (through
    # SLURM's requeue) and tests/test_checkpoint_resume.py.


def test_exit_duration_minutes_saves_and_exits_75(tmp_path):
    data = write_corpus(str(tmp_path / "corpus"), seed=6)
    status = tmp_path / "exit_status"
    argv = tiny_overrides(data, str(tmp_path), **{
        "train.duration": f"{ITERS} iterations", "checkpoint.save": f"{tmp_path}/ckpt", "run.exit_duration_minutes": 0,
        "parallel.tensor_model_parallel_size": 1, "parallel.pipeline_model_parallel_size": 1,
    })
    [code] = run_distributed(_main, 1, argv, env={"MEGACTLLM_EXIT_STATUS": str(status)})
    assert code == 75
    assert status.read_text().split() == ["75", "exit_duration_minutes", "1"]
    assert Path(tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "1"


def test_stop_file_counts_as_sigusr1(tmp_path, monkeypatch):
    """A batch shell that got SLURM's warning creates $MEGACTLLM_STOP_FILE instead of signalling the step."""
    from megactllm.training.run import signals as exit_signals

    exit_signals.reset()
    monkeypatch.setenv(exit_signals.STOP_FILE_ENV, str(tmp_path / "job.stop"))
    watch = exit_signals.ExitWatch(exit_duration_minutes=60)
    assert watch.check() is None
    (tmp_path / "job.stop").touch()
    assert watch.check() == "SIGUSR1"
