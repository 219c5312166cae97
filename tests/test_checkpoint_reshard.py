"""Checkpoints are layout-free: a TP2xPP2 (distributed-optimizer) checkpoint loads at TP1xPP1.

Model weights always reshard (megatron-core dist_checkpointing with global tensor names): the
logits of the loaded model equal the TP2xPP2 model's to 1e-5.

The distributed optimizer's state reshards over TP/PP only when it was saved in megatron-core's
fully_reshardable format and the run asks for it (checkpoint.reshard_optimizer=true): continuing at
TP1 then gives the same losses as continuing at TP2xPP2. Its default, faster dp_reshardable
format reshards over DP only, so a TP/PP change loads weights, LR schedule and counters and
starts the Adam moments from zero, with a warning; that path is tested too.
"""
import pytest
from train_utils import SEQ, VOCAB, tiny_overrides, train_in_process, write_corpus

from megactllm.config import load_config
from megactllm.testing import run_distributed

TP2PP2 = {"parallel.tensor_model_parallel_size": 2, "parallel.pipeline_model_parallel_size": 2,
          "parallel.use_distributed_optimizer": "true"}


def _logits(overrides, checkpoint):
    """Full-vocabulary logits of a fixed batch at this rank's layout (None off the last stage)."""
    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megactllm.model import build_model
    from megactllm.parallel import initialize_parallel
    from megactllm.checkpoint import Checkpointer

    cfg = load_config(None, overrides)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    chunks = build_model(cfg.model, cfg.parallel, cfg.optim)
    Checkpointer.load_weights(checkpoint, chunks, cfg.model)
    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(7))
    positions = torch.arange(SEQ).expand(2, SEQ)

    def forward_step(data_iterator, model):
        next(data_iterator)
        out = model(tokens, positions, None)

        def keep_logits(output, non_loss_data=True):
            return gather_from_tensor_model_parallel_region(output)[..., :VOCAB].clone()

        return out, keep_logits

    for c in chunks:
        c.eval()
    with torch.no_grad():
        out = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(range(1)), model=chunks[0],
            num_microbatches=1, seq_length=SEQ, micro_batch_size=2, forward_only=True, collect_non_loss_data=True,
        )
    return out[0] if ps.is_pipeline_last_stage() else None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """4 steps at TP2xPP2 with the distributed optimizer, then 3 more from its checkpoint (the target)."""
    work = tmp_path_factory.mktemp("reshard")
    data = write_corpus(str(work / "corpus"), seed=1)
    ckpt = str(work / "ckpt")
    first = tiny_overrides(data, str(work / "a"), **TP2PP2, **{
        "train.duration": "7 iterations", "checkpoint.save": ckpt, "run.exit_interval": 4, "checkpoint.interval": 4,
        "checkpoint.optimizer_format": "fully_reshardable"})
    run_distributed(train_in_process, 4, first, timeout=400)
    cont = tiny_overrides(data, str(work / "b"), **TP2PP2, **{"train.duration": "7 iterations", "checkpoint.load": ckpt})
    results = run_distributed(train_in_process, 4, cont, timeout=400)
    return data, work, f"{ckpt}/iter_0000004", results[-1]["losses"]


def test_tp2pp2_checkpoint_gives_equal_logits_at_tp1(trained):
    data, work, checkpoint, _ = trained
    sharded = [x for x in run_distributed(_logits, 4, tiny_overrides(data, str(work / "l4"), **TP2PP2), checkpoint) if x is not None]
    (single,) = run_distributed(_logits, 1, tiny_overrides(data, str(work / "l1")), checkpoint)
    assert len(sharded) == 2  # the two TP ranks of the last stage, each with the gathered vocabulary
    assert single.shape == (2, SEQ, VOCAB)
    for logits in sharded:
        assert (logits - single).abs().max().item() < 1e-5


def _resume_at_tp1(data, work, checkpoint, name, reshard, capsys=None):
    import shutil

    # Resume (checkpoint.load) from a copy, so that the TP1 run's own saves cannot disturb the other test.
    target = work / f"{name}_ckpt"
    shutil.copytree(checkpoint, target / "iter_0000004")
    (target / "latest_checkpointed_iteration.txt").write_text("4")
    overrides = tiny_overrides(data, str(work / name), **{"train.duration": "7 iterations", "checkpoint.load": str(target),
                                                         "checkpoint.reshard_optimizer": reshard,
                                                         "parallel.use_distributed_optimizer": "true"})
    (result,) = run_distributed(train_in_process, 1, overrides, timeout=400)
    return result


def test_optimizer_state_reshards_on_request(trained):
    data, work, checkpoint, continued = trained
    result = _resume_at_tp1(data, work, checkpoint, "resharded", "true")
    assert result["state"]["iteration"] == 7 and sorted(result["losses"]) == [5, 6, 7]
    for it in (5, 6, 7):
        assert result["losses"][it] == pytest.approx(continued[it], abs=1e-5), (it, result["losses"], continued)


def test_layout_change_without_reshard_starts_fresh_moments(trained):
    data, work, checkpoint, continued = trained
    result = _resume_at_tp1(data, work, checkpoint, "fresh", "false")
    assert result["state"]["iteration"] == 7
    # Same weights and data: the first resumed loss agrees; fresh Adam moments change the next ones.
    assert result["losses"][5] == pytest.approx(continued[5], abs=1e-5)
    assert abs(result["losses"][7] - continued[7]) > 1e-4
