"""DPO at TP=2, PP=2 and DP=2 equals one process (reference model through the same pipeline
schedule); reference log-probs precomputed at PP=2 give the same step as the live reference."""
import numpy as np
import pytest
from chat_fixtures import *
from chat_fixtures import SEQ
from chat_parallel import layout_report, precompute_on_layout

from megactllm.config import load_config
from megactllm.data.dpo_dataset import ReferenceLogps, build_dpo_datasets
from megactllm.testing import run_distributed

METRICS = ["dpo loss", "rewards/accuracy", "rewards/chosen", "rewards/rejected", "rewards/margin", "logps/chosen", "logps/rejected"]


@pytest.fixture(scope="module")
def dpo_train(chat_tokenizer, dpo_prefix):
    cfg = load_config(None, [f"model.seq_length={SEQ}", f"data.train_data_path=['{dpo_prefix}']"])
    return build_dpo_datasets(cfg, chat_tokenizer)[0]


@pytest.fixture(scope="module")
def dpo_batch(dpo_train):
    return [dpo_train[i] for i in range(8)]


@pytest.fixture(scope="module")
def single_process(policy_checkpoint, tiny_checkpoint, dpo_batch):
    (report,) = run_distributed(layout_report, 1, "dpo", 1, 1, policy_checkpoint, dpo_batch, 2, SEQ, tiny_checkpoint, timeout=300)
    return report[0]


def _merged(results):
    reports = [r[0] for r in results if r[0] is not None]
    return {k: np.sum([r[k] for r in reports], axis=0) for k in reports[0]}


def _assert_same(report, single):
    assert report["dpo loss"][1] == single["dpo loss"][1] == 8  # every pair counted once
    for name in METRICS:
        assert report[name][0] / report[name][1] == pytest.approx(single[name][0] / single[name][1], rel=1e-4, abs=1e-4), name


@pytest.mark.parametrize("tp,pp,world", [(2, 1, 2), (1, 2, 2), (1, 1, 2)], ids=["tp2", "pp2", "dp2"])
def test_dpo_at_tp_pp_dp_equals_one_process(policy_checkpoint, tiny_checkpoint, dpo_batch, single_process, tp, pp, world):
    results = run_distributed(layout_report, world, "dpo", tp, pp, policy_checkpoint, dpo_batch, 2, SEQ, tiny_checkpoint, timeout=300)
    assert all(r[1] for r in results), "gradients must be finite on every rank"
    _assert_same(_merged(results), single_process)
    # Policy and reference differ, so this is no trivial log(2) everywhere.
    assert abs(single_process["rewards/margin"][0]) > 1e-3


def test_precomputed_reference_logps_give_the_same_step(chat_tokenizer, chat_sp_model, dpo_prefix, policy_checkpoint,
                                                        tiny_checkpoint, single_process, tmp_path):
    out = str(tmp_path / "reference.npz")
    run_distributed(precompute_on_layout, 2, 1, 2, tiny_checkpoint, str(chat_sp_model), dpo_prefix, out, SEQ, timeout=300)
    reference = ReferenceLogps(out)
    assert np.isfinite(reference.arrays[dpo_prefix]).all() and (reference.arrays[dpo_prefix] < 0).all()
    cfg = load_config(None, [f"model.seq_length={SEQ}", f"data.train_data_path=['{dpo_prefix}']", f"train.dpo_reference_logprobs={out}"])
    train = build_dpo_datasets(cfg, chat_tokenizer)[0]
    items = [train[i] for i in range(8)]
    assert all("reference_logps" in it for it in items)
    # DP=2 with the stored values and no reference model in memory.
    results = run_distributed(layout_report, 2, "dpo", 1, 1, policy_checkpoint, items, 2, SEQ, "/nonexistent", timeout=300)
    _assert_same(_merged(results), single_process)
