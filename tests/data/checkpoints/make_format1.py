"""Make format1_2c88b3a/: a format-1 checkpoint written by megactllm at commit 2c88b3a (the last
format-1 release), and that code's own loss when it continues the run by one iteration.

    git worktree add /tmp/old-ckpt 2c88b3a && cp megactllm/_*.so /tmp/old-ckpt/megactllm/
    cd /tmp/old-ckpt && PYTHONPATH=/tmp/old-ckpt python /path/to/make_format1.py OUT_DIR WORK_DIR

then copy OUT_DIR/ckpt, WORK_DIR/corpus.{bin,idx,json} and WORK_DIR/expected.json here.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

# {corpus}, {save}, {load}, {log} are filled in; the test resumes with the same recipe.
OVERRIDES = {
    "model.arch": "tiny", "model.num_layers": 2, "model.hidden_size": 16, "model.ffn_hidden_size": 32,
    "model.num_attention_heads": 2, "model.vocab_size": 64, "model.seq_length": 16, "model.max_position_embeddings": 16,
    "data.data_path": "[{corpus}]", "data.split": "90,10,0", "data.data_cache_path": "{log}/cache",
    "train.global_batch_size": 4, "train.micro_batch_size": 2, "train.train_iters": 2, "train.save_interval": 2,
    "train.save": "{save}", "train.load": "{load}", "train.log_interval": 1, "train.eval_interval": 0,
    "train.eval_iters": 0, "train.log_dir": "{log}", "optim.lr": 3e-3, "optim.min_lr": 3e-4, "optim.lr_warmup_iters": 1,
}


def overrides(**paths) -> list:
    return [f"{k}={str(v).format(**paths)}" for k, v in OVERRIDES.items()]


def main(out: str, work: str) -> None:
    os.makedirs(work, exist_ok=True)
    prefix = f"{work}/corpus"
    rng = np.random.default_rng(0)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for _ in range(200):
        n, start = int(rng.integers(8, 40)), int(rng.integers(3, 56))
        builder.add_document(torch.tensor([start + (j % 7) for j in range(n)] + [2]), [n + 1])
    builder.finalize(prefix + ".idx")
    json.dump({"eod_id": 2, "vocab_size": 64}, open(prefix + ".json", "w"))
    train = [sys.executable, "-m", "megactllm.train"]
    paths = dict(corpus=prefix, save=out, load=f"{work}/none", log=f"{work}/log")
    assert subprocess.run(train + overrides(**paths)).returncode == 0
    # the old code's own continuation: iteration 3 from the saved checkpoint (a copy: the fixture stays as saved)
    shutil.copytree(out, f"{work}/cont")
    paths = dict(corpus=prefix, save=f"{work}/cont", load=f"{work}/cont", log=f"{work}/log_cont")
    assert subprocess.run(train + overrides(**paths) + ["train.train_iters=3"]).returncode == 0
    records = [json.loads(line) for line in open(f"{work}/log_cont/metrics.jsonl")]
    losses = {str(r["iteration"]): r["loss"] for r in records if r.get("kind") == "train"}
    json.dump({"made_by": "megactllm 2c88b3a (make_format1.py)", "continued_loss": losses},
              open(f"{work}/expected.json", "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
