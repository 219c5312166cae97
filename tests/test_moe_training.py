"""Training a mixture-of-experts model: expert parallelism trains like one process.

A tiny Qwen3-MoE-shaped model (4 layers, the first dense; 4 experts, top 2; aux loss and z-loss
on) trains 20 steps in one process (EP1) and at EP2 (two processes, data parallel 2) with each
token dispatcher: the losses agree to 1e-5. A run saved at EP2 (iteration 10) resumes at EP1: the
weights move exactly (iteration 11's loss, computed before its update, is the uninterrupted run's);
the Adam moments start fresh (megatron-core chains a separate expert optimizer at EP > 1, whose
state does not load into EP1's single one). metrics.jsonl carries the aux loss and tokens per expert.
"""
import json

import pytest
from train_utils import save_initial_checkpoint, tiny_overrides, train_in_process, write_corpus

from megactllm.testing import run_distributed

TOLERANCE = 1e-5
ITERS = 20
MOE = {
    "model.family": "qwen3_moe", "model.qk_layernorm": "true", "model.num_moe_experts": 4, "model.moe_router_topk": 2,
    "model.moe_ffn_hidden_size": 32, "model.moe_layer_pattern": "[0,1,1,1]", "model.moe_aux_loss_coeff": 0.01,
    "model.moe_z_loss_coeff": 0.001, "train.duration": f"{ITERS} iterations",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("moe_training")
    data = write_corpus(str(work / "corpus"), seed=0)
    base = tiny_overrides(data, str(work / "ep1"), **MOE)
    init = str(work / "init")
    run_distributed(save_initial_checkpoint, 1, base, init, timeout=300)
    (reference,) = run_distributed(train_in_process, 1, base + [f"checkpoint.pretrained={init}"], timeout=600)
    return data, work, init, reference["losses"]


def _assert_same(losses, reference, what):
    for it in losses:
        assert losses[it] == pytest.approx(reference[it], abs=TOLERANCE), f"{what} iteration {it}: {losses[it]} vs {reference[it]}"


@pytest.mark.parametrize("dispatcher", ["alltoall", "allgather"])
def test_ep2_trains_like_one_process(setup, dispatcher):
    data, work, init, reference = setup
    assert sorted(reference) == list(range(1, ITERS + 1))
    assert reference[ITERS] < reference[1] - 0.05, f"the reference run should learn: {reference}"
    run = work / f"ep2-{dispatcher}"
    extra = {**MOE, "parallel.expert_model_parallel_size": 2, "parallel.moe_token_dispatcher_type": dispatcher}
    if dispatcher == "alltoall":  # saves at 10 for the resume test, and stops there
        extra.update({"checkpoint.save": str(run / "ckpt"), "checkpoint.interval": 10})
    overrides = tiny_overrides(data, str(run), **extra) + [f"checkpoint.pretrained={init}"]
    results = run_distributed(train_in_process, 2, overrides, timeout=600)
    for rank, result in enumerate(results):
        assert sorted(result["losses"]) == sorted(reference)
        _assert_same(result["losses"], reference, f"EP2 {dispatcher} rank {rank}")
    records = [json.loads(line) for line in (run / "log" / "metrics.jsonl").read_text().splitlines()]
    moe = [r["moe"] for r in records if r.get("kind") == "train"]
    assert len(moe) == ITERS
    tokens_per_step = 8 * 32  # global batch x sequence
    for m in moe:
        assert m["aux_loss"] > 0 and m["z_loss"] > 0
        for layer in (1, 2, 3):
            assert 0 <= m[f"tokens_min/layer_{layer}"] <= 2 * tokens_per_step / 4 <= m[f"tokens_max/layer_{layer}"]
        assert "tokens_max/layer_0" not in m  # the dense layer


def test_saved_at_ep2_resumes_at_ep1(setup):
    data, work, init, reference = setup
    saved = work / "ep2-alltoall" / "ckpt"
    if not (saved / "iter_0000010").is_dir():
        pytest.skip("runs after test_ep2_trains_like_one_process[alltoall]")
    resumed = work / "resumed-ep1"
    import shutil

    shutil.copytree(saved / "iter_0000010", resumed / "iter_0000010")
    (resumed / "latest_checkpointed_iteration.txt").write_text("10")
    overrides = tiny_overrides(data, str(resumed), **MOE) + [f"checkpoint.load={resumed}"]
    (result,) = run_distributed(train_in_process, 1, overrides, timeout=600)
    assert sorted(result["losses"]) == list(range(11, ITERS + 1))
    _assert_same({11: result["losses"][11]}, reference, "resumed at EP1")
    assert result["losses"][ITERS] < reference[1] - 0.05
