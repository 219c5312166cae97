"""DPO at TP=2, PP=2 and DP=2 equals one process (reference model through the same pipeline
schedule); reference log-probs precomputed at PP=2 give the same step as the live reference."""
import numpy as np
import pytest
from chat_fixtures import SEQ
from chat_parallel import precompute_then_report

from megactllm.data.chat.dpo_dataset import ReferenceLogps
from megactllm.testing import run_distributed

# Fixtures shared across the SFT/DPO test modules (one instance per session, not per module).
pytest_plugins = ["chat_fixtures"]

METRICS = ["dpo loss", "rewards/accuracy", "rewards/chosen", "rewards/rejected", "rewards/margin", "logps/chosen", "logps/rejected"]


def _merged(reports):
    reports = [r for r in reports if r is not None]
    return {k: np.sum([r[k] for r in reports], axis=0) for k in reports[0]}


def _dpo(results):
    return _merged([r[1][0] for r in results]), all(r[1][1] for r in results)


def _assert_same(report, single):
    assert report["dpo loss"][1] == single["dpo loss"][1] == 8  # every pair counted once
    for name in METRICS:
        assert report[name][0] / report[name][1] == pytest.approx(single[name][0] / single[name][1], rel=1e-4, abs=1e-4), name


@pytest.mark.parametrize("tp,pp,world", [(2, 1, 2), (1, 2, 2), (1, 1, 2)], ids=["tp2", "pp2", "dp2"])
def test_dpo_at_tp_pp_dp_equals_one_process(layout_reports, tp, pp, world):
    single, _ = _dpo(layout_reports(1, 1, 1))
    report, grads_finite = _dpo(layout_reports(tp, pp, world))
    assert grads_finite, "gradients must be finite on every rank"
    _assert_same(report, single)
    # Policy and reference differ, so this is no trivial log(2) everywhere.
    assert abs(single["rewards/margin"][0]) > 1e-3


def test_precomputed_reference_logps_give_the_same_step(chat_sp_model, dpo_prefix, policy_checkpoint, tiny_checkpoint,
                                                        layout_reports, tmp_path):
    single, _ = _dpo(layout_reports(1, 1, 1))
    out = str(tmp_path / "reference.npz")
    results = run_distributed(precompute_then_report, 2, 2, policy_checkpoint, tiny_checkpoint, str(chat_sp_model),
                              dpo_prefix, out, SEQ, 8, timeout=300)
    values = ReferenceLogps(out).arrays[dpo_prefix]
    assert len(values) == 32 and np.isfinite(values).all() and (values < 0).all()
    assert all(has_reference for _, has_reference in results)
    _assert_same(_merged([r[0][0] for r in results]), single)
