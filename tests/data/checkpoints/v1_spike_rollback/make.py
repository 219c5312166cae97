"""Write a checkpoint with megactllm at commit 2c88b3a (callback state inside train_state):
a 1-layer model, spike skipping on, one forced spike rolled back (a skipped window recorded)."""
import sys
from functools import partial

sys.path.insert(0, "/tmp/old-cb/tests")
from train_utils import write_corpus, train_in_process  # noqa: E402

from megactllm.testing import run_distributed  # noqa: E402

WORK = sys.argv[1]


def spiking_task(cfg):
    from megactllm.training.pretrain import PretrainTask

    class Spiking(PretrainTask):
        calls = 0

        def forward_step(self, data_iterator, model):
            Spiking.calls += 1
            output, loss_func = super().forward_step(data_iterator, model)
            if Spiking.calls != 6:
                return output, loss_func

            def scaled(out):  # the 6th step's loss and gradients x50: a spike
                total, count, report = loss_func(out)
                return total * 50, count, {k: v * 50 for k, v in report.items()}
            return output, scaled

    return Spiking(cfg)


def overrides(data, work):
    return [
        "model.arch=tiny", "model.num_layers=1", "model.hidden_size=16", "model.ffn_hidden_size=32",
        "model.num_attention_heads=2", "model.vocab_size=512", "model.seq_length=32",
        "model.max_position_embeddings=32", f"data.data_path=[{data}]", "data.split=100,0,0",
        f"data.data_cache_path={work}/data_cache", "train.global_batch_size=2", "train.micro_batch_size=2",
        "train.train_iters=7", "train.log_interval=1", "train.eval_interval=0", "train.eval_iters=0",
        f"train.log_dir={work}/log", f"train.save={work}/ckpt", "train.save_interval=5",
        "train.skip_spiky_steps=true", "train.spike_window=4", "train.spike_rollback_after=1",
        "optim.lr=3e-3", "optim.min_lr=3e-4", "optim.lr_warmup_iters=1", "optim.bf16=false",
    ]


if __name__ == "__main__":
    data = write_corpus(f"{WORK}/corpus", seed=11, documents=60)
    out = run_distributed(train_in_process, 1, overrides(data, WORK), spiking_task, timeout=600)
    print(out[0]["state"])
