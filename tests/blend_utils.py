"""Shared pieces of the blend-schedule tests: three corpora with disjoint token ranges, a schedule,
and a rank body that records which samples every step read."""
from __future__ import annotations

import hashlib
import json

import numpy as np
from train_utils import VOCAB, tiny_overrides, write_corpus

# Token ranges per corpus: a sample's first non-EOD token says which dataset it came from.
RANGES = {"a": (3, 170), "b": (170, 340), "c": (340, VOCAB)}


def write_corpora(root: str) -> dict:
    return {name: write_corpus(f"{root}/{name}", seed=i, low=lo, high=hi) for i, (name, (lo, hi)) in enumerate(RANGES.items())}


def source_of(tokens) -> str:
    """Which corpus a sample's tokens come from (EOD=2 and its neighbours belong to no range)."""
    for t in np.asarray(tokens).tolist():
        for name, (lo, hi) in RANGES.items():
            if lo <= t < hi:
                return name
    raise AssertionError(f"sample holds no corpus token: {tokens}")


def schedule_override(corpora: dict, boundary: int, second=(0.5, 0.25, 0.25)) -> str:
    """Phase 'warm' (0.3 a, 0.7 b) up to iteration `boundary`, then 'decay' (b, c, a) to the end."""
    schedule = [
        {"name": "warm", "end_iteration": boundary, "blend": ["0.3", corpora["a"], "0.7", corpora["b"]]},
        {"name": "decay", "blend": [str(second[0]), corpora["b"], str(second[1]), corpora["c"], str(second[2]), corpora["a"]]},
    ]
    return "data.blend_schedule=" + json.dumps(schedule)


def scheduled_overrides(corpora: dict, workdir: str, boundary: int, **extra) -> list[str]:
    base = tiny_overrides(corpora["a"], workdir, **extra)
    base = [o for o in base if not o.startswith("data.data_path=")]
    return base + [schedule_override(corpora, boundary)]


def _digest(tokens) -> str:
    return hashlib.sha1(np.ascontiguousarray(tokens.numpy()).tobytes()).hexdigest()[:16]


def train_recording_samples(overrides: list[str], stdout_path: str = None) -> dict:
    """Rank body: train, and return per step the digests and sources of the samples this rank read.

    With `stdout_path`, what the run prints (rank 0's log lines) is written there.
    """
    import contextlib
    from dataclasses import asdict

    from megactllm.config import load_config
    from megactllm.parallel import initialize_parallel
    from megactllm.training.trainer import run_training
    from megactllm.training.stages.pretrain import PretrainTask

    seen: list = []

    class Recording(PretrainTask):
        def prepare_global_batch(self, microbatches, model_chunks):
            seen.append([(_digest(row), source_of(row)) for mb in microbatches for row in mb["tokens"]])
            return microbatches

    cfg = load_config(None, overrides)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    with open(stdout_path, "w") if stdout_path else contextlib.nullcontext() as out:
        with contextlib.redirect_stdout(out) if out else contextlib.nullcontext():
            result = run_training(cfg, Recording(cfg))
    return {"losses": result.losses, "state": asdict(result.state), "steps": seen}
