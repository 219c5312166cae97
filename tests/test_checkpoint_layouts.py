"""Checkpoints are layout-free: saved at one TP/PP layout, the same model loads at another."""
import json

import pytest
import torch

from megactllm.config import load_config
from megactllm.testing import run_distributed

# 1100 pads to 1152 at TP=1 but 1280 at TP=2: the loss must not see the padding.
VOCAB, SEQ, MBS = 1100, 32, 2


def _config(tp, pp):
    return load_config(
        None,
        [
            "model.arch=tiny",
            f"model.vocab_size={VOCAB}",
            f"model.seq_length={SEQ}",
            f"parallel.tensor_model_parallel_size={tp}",
            f"parallel.pipeline_model_parallel_size={pp}",
        ],
    )


def _per_token_losses(tp, pp, load_from=None, save_to=None, seed=1234):
    """Per-token LM losses of a fixed batch, after optionally loading and before optionally saving."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megactllm.model import build_model
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.checkpoint import Checkpointer

    cfg = _config(tp, pp)
    initialize_parallel(cfg.parallel, seed=seed, num_layers=cfg.model.num_layers)
    chunks = build_model(cfg.model, cfg.parallel, cfg.optim)
    if load_from:
        Checkpointer.load_weights(load_from, chunks, cfg.model)
    tokens = torch.randint(0, VOCAB, (MBS, SEQ + 1), generator=torch.Generator().manual_seed(7))
    position_ids = torch.arange(SEQ).expand(MBS, SEQ)

    def forward_step(data_iterator, model):
        output = model(tokens[:, :-1], position_ids, None, labels=tokens[:, 1:])
        return output, lambda out: (out.sum(), {"losses": out.detach().clone()})

    out = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(range(1)),
        model=chunks,
        num_microbatches=1,
        seq_length=SEQ,
        micro_batch_size=MBS,
        forward_only=True,
    )
    if save_to:
        Checkpointer(save_to).save(5, chunks, cfg)
    result = out[0]["losses"] if parallel_state.is_pipeline_last_stage() else None
    destroy_parallel()
    return result


def test_save_tp1_load_tp2pp2_and_back(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    (reference,) = run_distributed(_per_token_losses, 1, 1, 1, None, str(first), seed=11)
    results = run_distributed(_per_token_losses, 4, 2, 2, str(first), str(second), seed=99)
    sharded = [r for r in results if r is not None]
    assert len(sharded) == 2  # both TP ranks of the last stage
    for losses in sharded:
        torch.testing.assert_close(losses, reference, atol=1e-5, rtol=1e-5)
    (back,) = run_distributed(_per_token_losses, 1, 1, 1, str(second), None, seed=5)
    torch.testing.assert_close(back, reference, atol=1e-5, rtol=1e-5)
    meta = json.loads((second / "iter_0000005" / "megactllm.json").read_text())
    assert meta["parallel"]["tensor_model_parallel_size"] == 2
    assert (second / "latest_checkpointed_iteration.txt").read_text() == "5"


def test_shape_mismatch_and_missing_checkpoint_are_clear_errors(tmp_path):
    from megactllm.checkpoint import CheckpointError, check_model_matches, read_metadata

    with pytest.raises(CheckpointError, match="does not exist"):
        read_metadata(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a megactllm checkpoint"):
        read_metadata(tmp_path / "empty")
    a, b = _config(1, 1).model, _config(1, 1).model
    b.hidden_size = 128
    with pytest.raises(CheckpointError, match="hidden_size: checkpoint 64 vs model 128"):
        check_model_matches(a, b, "ckpt")


def test_partial_save_is_never_the_latest(tmp_path):
    from megactllm.checkpoint import CheckpointError, resolve_checkpoint_dir

    (tmp_path / "iter_0000009.partial" / "model").mkdir(parents=True)
    with pytest.raises(CheckpointError):
        resolve_checkpoint_dir(tmp_path)
