"""Shared pieces of the training tests: a synthetic token corpus, tiny recipes, an initial checkpoint.

Token ids follow short repeating patterns per document, so a tiny model's loss falls within a
few steps; documents end with EOD (id 2), recorded in each dataset's sidecar as the tokenizer's.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from megactllm.config import load_config

VOCAB = 512
EOD = 2
SEQ = 32


def write_corpus(prefix: str, seed: int, documents: int = 300, low: int = 3, high: int = VOCAB) -> str:
    """A .bin/.idx pair written by megatron-core's own builder, plus our {prefix}.json sidecar (EOD id)."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for _ in range(documents):
        n = int(rng.integers(8, 80))
        start = int(rng.integers(low, high - 8))
        builder.add_document(torch.tensor([start + (j % 7) for j in range(n)] + [EOD]), [n + 1])
    builder.finalize(prefix + ".idx")
    with open(prefix + ".json", "w") as f:
        json.dump({"eod_id": EOD, "vocab_size": VOCAB}, f)
    return prefix


def tiny_overrides(data_prefix: str, workdir: str, **extra) -> list[str]:
    """A 4-layer, 64-wide model on 32-token samples; 4 micro-batches of 2 per step at DP=1."""
    base = {
        "model.arch": "tiny",
        "model.vocab_size": VOCAB,
        "model.seq_length": SEQ,
        "model.max_position_embeddings": SEQ,
        "data.data_path": f"[{data_prefix}]",
        "data.split": "90,10,0",
        "data.data_cache_path": f"{workdir}/data_cache",
        "train.global_batch_size": 8,
        "train.micro_batch_size": 2,
        "train.duration": "5 iterations",
        "logging.interval": 1,
        "validation.interval": 0,
        "validation.iters": 0,
        "logging.dir": f"{workdir}/log",
        "optim.lr": 3e-3,
        "optim.min_lr": 3e-4,
        "optim.lr_warmup_iters": 1,
        "optim.weight_decay": 0.01,
    }
    base.update({k: v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def train_in_process(overrides: list[str], task_factory=None) -> dict:
    """Body of a run_distributed rank: initialise, train, return {losses, state} (plain types)."""
    from dataclasses import asdict

    from megactllm.parallel import initialize_parallel
    from megactllm.training.trainer import run_training

    cfg = load_config(None, overrides)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    task = task_factory(cfg) if task_factory else None
    result = run_training(cfg, task)
    return {"losses": result.losses, "state": asdict(result.state), "last_checkpoint": result.last_checkpoint}


def save_initial_checkpoint(overrides: list[str], path: str) -> None:
    """Rank body: build the model at the recipe's layout and save its initial weights as iteration 0."""
    from megactllm.model import build_model
    from megactllm.parallel import initialize_parallel
    from megactllm.checkpoint import Checkpointer

    cfg = load_config(None, overrides)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    Checkpointer(path).save(0, build_model(cfg.model, cfg.parallel, cfg.optim), cfg)


def torchrun_command(nproc: int, overrides: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "megactllm.train", *overrides,
    ]


def torchrun_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def read_losses(log_dir: str) -> dict:
    from megactllm.training.run.metrics import read_metrics

    train, _ = read_metrics(log_dir)
    return {r["iteration"]: r["loss"] for r in train}
