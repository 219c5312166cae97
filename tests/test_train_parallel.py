"""Every parallel layout trains like one process: same initial weights, same data, same losses.

The reference is a single process (TP=PP=DP=1). Each layout starts from the same initial
checkpoint (checkpoint.pretrained) and runs 5 optimizer steps of 4 micro-batches (fp32,
Adam, warmup + cosine, clipping). Losses are global per-token means; the layouts only reorder
floating-point sums, so they agree to 1e-5 absolute (observed: ~1e-7).
"""
import pytest
from train_utils import (
    save_initial_checkpoint,
    tiny_overrides,
    train_in_process,
    write_corpus,
)

from megactllm.testing import run_distributed

TOLERANCE = 1e-5

# Each run costs a few seconds of process start-up on 2 cores, so features share layouts:
# TP alone runs with selective recompute, PP alone with full recompute.
LAYOUTS = {
    "tp2-recompute-selective": (2, {"parallel.tensor_model_parallel_size": 2, "parallel.recompute_granularity": "selective"}),
    "tp2-sp": (2, {"parallel.tensor_model_parallel_size": 2, "parallel.sequence_parallel": "true"}),
    "pp2-recompute-full": (2, {"parallel.pipeline_model_parallel_size": 2, "parallel.recompute_granularity": "full"}),
    "pp2-vpp2": (2, {"parallel.pipeline_model_parallel_size": 2, "parallel.virtual_pipeline_model_parallel_size": 2}),
    "dp2": (2, {}),
    "dp2-distopt": (2, {"parallel.use_distributed_optimizer": "true"}),
    "tp2pp2": (4, {"parallel.tensor_model_parallel_size": 2, "parallel.pipeline_model_parallel_size": 2}),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("parallel")
    data = write_corpus(str(work / "corpus"), seed=0)
    base = tiny_overrides(data, str(work))
    init = str(work / "init")
    run_distributed(save_initial_checkpoint, 1, base, init, timeout=300)
    (reference,) = run_distributed(train_in_process, 1, base + [f"checkpoint.pretrained={init}"], timeout=300)
    return data, work, init, reference["losses"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(setup, layout):
    data, work, init, reference = setup
    nproc, extra = LAYOUTS[layout]
    overrides = tiny_overrides(data, str(work / layout), **extra) + [f"checkpoint.pretrained={init}"]
    results = run_distributed(train_in_process, nproc, overrides, timeout=400)
    assert sorted(reference) == [1, 2, 3, 4, 5]
    assert reference[5] < reference[1] - 0.05, f"the reference run should learn: {reference}"
    for rank, result in enumerate(results):
        losses = result["losses"]
        assert sorted(losses) == sorted(reference), f"rank {rank} ran other iterations"
        for it in reference:
            assert losses[it] == pytest.approx(reference[it], abs=TOLERANCE), (
                f"{layout} rank {rank} iteration {it}: {losses[it]} vs single process {reference[it]}"
            )
        assert result["state"]["skipped_iterations"] == 0
