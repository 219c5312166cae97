"""Asynchronous checkpoints: tensors written in the background are those of the saving iteration.

Two ranks (PP=2, distributed optimizer) train 8 iterations saving every 4, once with synchronous
and once with asynchronous saves. Training is unaffected (equal losses), each async iteration is
published (metadata, rename, latest pointer) once written, and its weights equal the synchronous
checkpoint's although training moved on while the background process wrote them.
"""
import json

import torch
from train_utils import tiny_overrides, train_in_process, write_corpus

from megactllm.config import load_config
from megactllm.testing import run_distributed


def _overrides(data, run_dir, async_save):
    return tiny_overrides(
        data, str(run_dir),
        **{
            "train.train_iters": 8,
            "train.save": f"{run_dir}/ckpt",
            "train.save_interval": 4,
            "train.async_save": str(async_save).lower(),
            "parallel.pipeline_model_parallel_size": 2,
            "parallel.use_distributed_optimizer": "true",
        },
    )


def _weights(overrides, path):
    from megactllm.model import build_model
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.training.checkpoint import load_model_weights

    cfg = load_config(None, overrides + ["parallel.pipeline_model_parallel_size=1", "parallel.use_distributed_optimizer=false"])
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    (chunk,) = build_model(cfg.model, cfg.parallel, cfg.optim)
    load_model_weights(path, [chunk], cfg.model)
    weights = {k: v.clone() for k, v in chunk.state_dict().items() if isinstance(v, torch.Tensor)}
    destroy_parallel()
    return weights


def test_async_save_publishes_the_saving_iterations_weights(tmp_path):
    data = write_corpus(str(tmp_path / "corpus"), seed=0)
    sync_o = _overrides(data, tmp_path / "sync", False)
    async_o = _overrides(data, tmp_path / "async", True)
    sync = [r for r in run_distributed(train_in_process, 2, sync_o, timeout=600) if r["losses"]]
    asyn = [r for r in run_distributed(train_in_process, 2, async_o, timeout=600) if r["losses"]]
    assert sync[0]["losses"] == asyn[0]["losses"]

    ckpt = tmp_path / "async" / "ckpt"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "8"
    assert not list(ckpt.glob("*.partial")), "every background save was published"
    for it in (4, 8):
        meta = json.loads((ckpt / f"iter_{it:07d}" / "megactllm.json").read_text())
        assert meta["iteration"] == it and meta["train_state"]["iteration"] == it
        (expected,) = run_distributed(_weights, 1, sync_o, str(tmp_path / "sync" / "ckpt" / f"iter_{it:07d}"))
        (got,) = run_distributed(_weights, 1, async_o, str(ckpt / f"iter_{it:07d}"))
        assert expected.keys() == got.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=f"iteration {it}: {name}")
