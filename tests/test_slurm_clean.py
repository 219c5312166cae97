"""examples/clean/submit_slurm.sh on the local two-node cluster: the chain of dependent array jobs
(filter, minhash, lsh, cluster, dedup, report) over 4 real-text shards gives byte-identical
outputs and the same report as the local run of the same recipe."""
import subprocess
from pathlib import Path

from slurm_utils import cluster_env, wait_job
from test_clean_runner import comparable_report, make_corpus, outputs

from megactllm.clean import CleanConfig, run_all

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "examples/clean/mapcc.yaml"


def test_cleaning_chain_as_slurm_array_jobs_equals_local_run(shared_data, tmp_path):
    env = cluster_env()
    inputs = make_corpus(shared_data, tmp_path / "in", shards=4, per_shard=40)
    common = [f"input.paths=[{','.join(str(p) for p in inputs)}]", "run.progress_interval_s=1000",
              "dedup.num_perm=40", "dedup.bands=4", "dedup.rows=10"]

    submit_dir = tmp_path / "submit"
    submit_dir.mkdir()
    proc = subprocess.run([str(REPO / "examples/clean/submit_slurm.sh"), str(RECIPE), "4", *common,
                           f"run.output_dir={tmp_path / 'slurm'}"],
                          cwd=submit_dir, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    jobs = dict(pair.split() for pair in proc.stdout.split(":", 1)[1].strip().split(", "))
    assert list(jobs) == ["filter", "minhash", "lsh", "cluster", "dedup", "report"]

    run_all(CleanConfig.from_yaml(str(RECIPE), [*common, f"run.output_dir={tmp_path / 'local'}"]))

    for stage, job in jobs.items():
        # An array job's record is its first task's; wait for every task of every stage.
        for task in range(5 if stage == "lsh" else 4 if stage in ("filter", "minhash", "dedup") else 1):
            info = wait_job(f"{job}_{task}", env, 600)
            logs = "\n".join(p.read_text() for p in (submit_dir / "logs").glob("*.out"))
            assert info["JobState"] == "COMPLETED", (stage, task, info, logs[-3000:])
    local = outputs(tmp_path / "local")
    assert len([name for name in local if not name.startswith("filter-")]) >= 4  # kept and removed, per shard
    assert outputs(tmp_path / "slurm") == local
    assert comparable_report(tmp_path / "slurm") == comparable_report(tmp_path / "local")
