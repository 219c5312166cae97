"""examples/pretrain_ctllm_2b.slurm on the local two-node cluster, through a time limit and a scancel.

One job, submitted as a user would (from a fresh directory with no logs/ in it), with the tiny
model as command-line overrides and the layout from the environment (GPUS_PER_NODE=2, TP=2): 2
nodes x 2 ranks = DP 2 across the nodes, TP 2 with sequence parallel inside each. `--time=2
--signal=B:USR1@90` makes SLURM warn the batch shell within its first 30 s; then
  1. every rank stops at the same iteration boundary k with a checkpoint, the job requeues itself;
  2. the requeued run resumes from k; the test `scancel`s it after two more iterations (SIGTERM),
     it saves at iteration m and ends (CANCELLED, not requeued);
  3. iterations 1..m of the two runs have the losses of an uninterrupted local torchrun with the
     same recipe and overrides (stopping at m through run.exit_interval).
"""
import subprocess
import sys
from pathlib import Path

from slurm_utils import cluster_env, sbatch, wait_job
from train_utils import read_losses, tiny_overrides, write_corpus

from megactllm.testing.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
ITERS = 2000  # never reached: the run is stopped by the signal, then by scancel


def _overrides(data: str, work: Path) -> list[str]:
    return tiny_overrides(data, str(work), **{
        "train.duration": f"{ITERS} iterations",
        "data.tokenizer_model": "null",         # the synthetic corpus carries its EOD id in a sidecar
        "optim.bf16": "false",
        "logging.dir": f"{work}/log",
    })


def _iterations(log_dir: Path) -> int:
    return max(read_losses(str(log_dir)), default=0) if (log_dir / "metrics.jsonl").exists() else 0


def test_pretrain_sbatch_requeues_at_time_limit_stops_on_scancel_and_matches_torchrun(tmp_path):
    env = cluster_env()
    data = write_corpus(str(tmp_path / "corpus"), seed=11)
    work, ckpt = tmp_path / "slurm", tmp_path / "slurm" / "ckpt"
    submit_dir = tmp_path / "submit"  # fresh: no logs/ directory for SLURM to fail on
    submit_dir.mkdir()
    env.update(REPO=str(REPO), CKPT=str(ckpt), DATA_ROOT=str(tmp_path / "data_root"), GPUS_PER_NODE="2", TP="2",
               RDZV_PORT=str(free_port()), MEGACTLLM_EXIT_STATUS=str(tmp_path / "exit_status"))
    job = sbatch(["--nodes=2", "--cpus-per-task=2", "--gpus-per-node=0", "--time=2", "--signal=B:USR1@90",
                  str(REPO / "examples/pretrain_ctllm_2b.slurm"), *_overrides(data, work)], env, str(submit_dir))
    out = submit_dir / f"ctllm-2b-{job}.out"

    # 1. The warning signal: checkpoint at iteration k on every rank, then requeue.
    info = wait_job(job, env, 240, until=lambda i: int(i.get("Restarts", 0)) >= 1, log=out)
    # The requeued run would get the same warning again within 30 s: give it room to be scancelled.
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=30"], env=env, check=True)
    k = int((ckpt / "latest_checkpointed_iteration.txt").read_text())
    assert 1 <= k < ITERS
    assert sorted(p.name for p in (ckpt / f"iter_{k:07d}" / "rng").iterdir()) == [f"rank_{r:05d}.pt" for r in range(4)]
    text = out.read_text()
    assert "USR1 received" in text and "requeueing job" in text, text[-3000:]

    # 2. The requeued run resumes; scancel (SIGTERM) after two more iterations saves at m and ends it.
    wait_job(job, env, 240, until=lambda i: i.get("JobState") == "RUNNING" and _iterations(work / "log") >= k + 2,
             log=out)
    subprocess.run(["scancel", job], env=env, check=True)
    info = wait_job(job, env, 120, log=out)
    assert info["JobState"] == "CANCELLED" and int(info["Restarts"]) >= 1, info
    code, reason, m = (tmp_path / "exit_status").read_text().split()
    assert (code, reason) == ("75", "SIGTERM") and int(m) > k
    m = int(m)
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(m)
    assert f"resumed from {ckpt / f'iter_{k:07d}'}" in out.read_text()
    assert not (ckpt / "run.lock").exists()
    slurm_losses = read_losses(str(work / "log"))
    assert sorted(slurm_losses) == list(range(1, m + 1))

    # 3. The same recipe under a local torchrun, uninterrupted, to iteration m.
    ref = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
           "-m", "megactllm.train", "--config", "examples/configs/ctllm_2b.yaml",
           "parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=1",
           "parallel.sequence_parallel=true",
           f"checkpoint.save={ref}/ckpt", f"checkpoint.load={ref}/ckpt", f"logging.tensorboard_dir={ref}/tb",
           *_overrides(data, ref), f"run.exit_interval={m}"]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    reference = read_losses(str(ref / "log"))
    assert sorted(reference) == list(range(1, m + 1))
    for it in reference:
        assert abs(slurm_losses[it] - reference[it]) <= 1e-5, (it, slurm_losses[it], reference[it])

