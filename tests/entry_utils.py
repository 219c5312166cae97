"""Helpers of the entry-point tests: a real checkpoint to start from, and torchrun launches."""
from __future__ import annotations

import subprocess
import sys

from train_utils import torchrun_env


def save_checkpoint_with_tokenizer(overrides: list[str], path: str, tokenizer: str) -> None:
    """Rank body: build the model of `overrides` and save it as iteration 0 with a copy of `tokenizer`."""
    from megactllm.config import load_config
    from megactllm.model import build_model
    from megactllm.parallel import initialize_parallel
    from megactllm.checkpoint import Checkpointer

    cfg = load_config(None, overrides)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    Checkpointer(path).save(0, build_model(cfg.model, cfg.parallel, cfg.optim), cfg, tokenizer_path=tokenizer)


def launch(args: list[str], nproc: int = 2, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """torchrun -m megactllm.train ARGS on `nproc` gloo processes; stdout and stderr together."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "megactllm.train", *args]
    run_env = torchrun_env()
    run_env.pop("PYTHONWARNINGS", None)  # the output filters are under test: no blanket silence
    run_env.pop("MEGACTLLM_VERBOSE", None)
    run_env.update(env or {})
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=run_env, timeout=timeout)
