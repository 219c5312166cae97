"""examples/ctllm_2b_sft.slurm and ctllm_2b_dpo.slurm on the local two-node cluster (tiny overrides).

Each script runs its CT-LLM recipe with the tiny model, real chat data from ../shared/data and a
randomly initialised tiny checkpoint as checkpoint.pretrained, on 2 nodes x 1 rank (data
parallel across the nodes). Its losses equal those of the same recipe and overrides under a
local torchrun. The two jobs and the two local runs go side by side (the cluster has room).
"""
import subprocess
import sys
from pathlib import Path

from chat_fixtures import SEQ
from slurm_utils import cluster_env, sbatch, wait_job
from train_utils import read_losses

from megactllm.testing.distributed import free_port

pytest_plugins = ["chat_fixtures"]
REPO = Path(__file__).resolve().parents[1]
ITERS = 3


def _overrides(stage: str, work: Path, tokenizer, data: str, checkpoint: str) -> list[str]:
    return [
        "model.arch=tiny", "model.vocab_size=64002", "model.make_vocab_size_divisible_by=1",
        f"model.seq_length={SEQ}", f"model.max_position_embeddings={SEQ}", "optim.bf16=false",
        f"data.tokenizer_model={tokenizer}", f"data.train_data_path={data}",
        "train.micro_batch_size=2", "train.global_batch_size=8", f"train.duration={ITERS} iterations", "logging.interval=1",
        f"checkpoint.pretrained={checkpoint}", f"checkpoint.save={work}/ckpt", f"checkpoint.load={work}/ckpt",
        f"logging.dir={work}/log",
    ]


def test_sft_and_dpo_sbatch_scripts_match_local_torchrun(tmp_path, chat_sp_model, sft_prefixes, dpo_prefix,
                                                          tiny_checkpoint):
    env = cluster_env()
    env.update(REPO=str(REPO), GPUS_PER_NODE="1")
    runs = {
        "sft": ("examples/ctllm_2b_sft.slurm", "examples/configs/ctllm_2b_sft.yaml",
                f"['4', '{sft_prefixes['zh']}', '1', '{sft_prefixes['en']}']"),
        "dpo": ("examples/ctllm_2b_dpo.slurm", "examples/configs/ctllm_2b_dpo.yaml", f"['{dpo_prefix}']"),
    }
    jobs, local = {}, {}
    for stage, (script, recipe, data) in runs.items():
        slurm_work, local_work = tmp_path / f"{stage}_slurm", tmp_path / f"{stage}_torchrun"
        job_env = dict(env, RDZV_PORT=str(free_port()))
        args = _overrides(stage, slurm_work, chat_sp_model, data, tiny_checkpoint)
        jobs[stage] = sbatch(["--nodes=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=10", str(REPO / script),
                              *args], job_env, str(tmp_path))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "megactllm.train", "--config", recipe,
               *_overrides(stage, local_work, chat_sp_model, data, tiny_checkpoint)]
        local[stage] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    for stage, proc in local.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    for stage, job in jobs.items():
        out = tmp_path / f"ctllm-2b-{stage}-{job}.out"
        info = wait_job(job, env, 600, log=out)
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, out.read_text()[-3000:])
        assert "slurm_step: step exit 0, training exit 0" in out.read_text()
        slurm_losses = read_losses(str(tmp_path / f"{stage}_slurm" / "log"))
        reference = read_losses(str(tmp_path / f"{stage}_torchrun" / "log"))
        assert sorted(reference) == list(range(1, ITERS + 1)) and sorted(slurm_losses) == sorted(reference), stage
        for it in reference:
            assert abs(slurm_losses[it] - reference[it]) <= 1e-5, (stage, it, slurm_losses[it], reference[it])
        assert (tmp_path / f"{stage}_slurm" / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == str(ITERS)
