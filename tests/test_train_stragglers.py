"""The straggler report names a rank slowed on purpose."""
import json
import os

import pytest
from train_utils import tiny_overrides, train_in_process, write_corpus

from megactllm.testing import run_distributed

SLOW_ENV = "MEGACTLLM_TEST_SLOW_RANK"


def _slowed_task(cfg):
    """PretrainTask whose forward sleeps on the rank named by MEGACTLLM_TEST_SLOW_RANK (this test only)."""
    import time

    import torch.distributed as dist

    from megactllm.training.stages.pretrain import PretrainTask

    class Slowed(PretrainTask):
        def forward_step(self, data_iterator, model):
            if str(dist.get_rank()) == os.environ.get(SLOW_ENV):
                time.sleep(0.1)
            return super().forward_step(data_iterator, model)

    return Slowed(cfg)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    work = tmp_path_factory.mktemp("stragglers")
    return work, write_corpus(str(work / "corpus"), seed=3)


def test_straggler_report_names_the_slowed_rank(corpus, capfd):
    work, data = corpus
    ov = tiny_overrides(data, str(work / "slow"), **{"train.duration": "6 iterations", "logging.interval": 2,
                                                      "train.global_batch_size": 2, "train.micro_batch_size": 1})
    run_distributed(train_in_process, 2, ov, _slowed_task, timeout=600, env={SLOW_ENV: "1"})
    records = [json.loads(x) for x in (work / "slow" / "log" / "metrics.jsonl").read_text().splitlines()]
    reports = [r for r in records if r.get("kind") == "train" and "slowest_rank" in r]
    assert [r["iteration"] for r in reports] == [2, 4, 6]
    assert all(r["slowest_rank"] == 1 and r["step_time_slowest_over_median"] > 1.2 for r in reports), reports
    assert all(r["step_time_slowest_rank"] >= 0.1 for r in reports)
    out = capfd.readouterr()
    assert "straggler: rank 1" in out.err + out.out
