"""A non-finite loss skips the step and is counted; several in a row stop the run cleanly.

The NaN comes from a real Task plugged into the loop through the stage registry: pretraining
whose loss is multiplied by NaN on chosen iterations (as a corrupt batch or an overflow would
make it). A skipped step must leave the weights, Adam state and LR schedule untouched.
"""
import math

import pytest
from train_utils import tiny_overrides, write_corpus

from megactllm.testing import run_distributed


class PoisonedPretrainTask:
    """PretrainTask whose loss is NaN on the given iterations (1-based)."""

    def __init__(self, cfg, poisoned):
        from megactllm.training.stages.pretrain import PretrainTask

        self.inner = PretrainTask(cfg)
        self.name = "poisoned"
        self.provides = self.inner.provides
        self.poisoned = set(poisoned)
        self.iteration = 0

    def build_datasets(self, cfg, tokenizer):
        return self.inner.build_datasets(cfg, tokenizer)

    def prepare_global_batch(self, microbatches, model_chunks):
        if model_chunks[0].training:
            self.iteration += 1
        return microbatches

    def forward_step(self, data_iterator, model):
        output, loss_func = self.inner.forward_step(data_iterator, model)
        if self.iteration not in self.poisoned:
            return output, loss_func

        def poisoned_loss(output_tensor):
            loss_sum, count, report = loss_func(output_tensor)
            nan = loss_sum * float("nan")
            return nan, count, {k: v * float("nan") for k, v in report.items()}

        return output, poisoned_loss

    def metric_names(self):
        return self.inner.metric_names()


def _train(overrides, poisoned):
    import torch

    from megactllm.config import load_config
    from megactllm.parallel import initialize_parallel
    from megactllm.training.trainer import Trainer
    from megactllm.training.callbacks.nonfinite import NonFiniteLossError
    from megactllm.training.stages import build_task, register_stage

    register_stage("poisoned", lambda cfg: PoisonedPretrainTask(cfg, poisoned))
    cfg = load_config(None, overrides + ["train.stage=poisoned"])
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    trainer = Trainer(cfg, build_task(cfg))
    snapshots = {}
    original_step = trainer.train_step

    def step_and_snapshot():
        out = original_step()
        snapshots[trainer.state.iteration + 1] = (
            [p.detach().clone() for p in trainer.model[0].parameters()],
            float(trainer.optimizer.param_groups[0]["lr"]),
        )
        return out

    trainer.train_step = step_and_snapshot
    error = None
    try:
        result = trainer.fit()
        losses, state = result.losses, result.state
    except NonFiniteLossError as e:
        error, losses, state = str(e), None, trainer.state
    unchanged = {
        it: all(torch.equal(a, b) for a, b in zip(snapshots[it][0], snapshots[it - 1][0])) and snapshots[it][1] == snapshots[it - 1][1]
        for it in snapshots if it - 1 in snapshots
    }
    return {"losses": losses, "skipped": state.skipped_iterations, "nonfinite": state.nonfinite_iterations,
            "iteration": state.iteration, "error": error, "unchanged": unchanged, "last_checkpoint": trainer.last_checkpoint}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    work = tmp_path_factory.mktemp("nonfinite")
    return work, write_corpus(str(work / "corpus"), seed=2)


def test_one_nonfinite_step_is_skipped_and_counted(corpus):
    work, data = corpus
    (r,) = run_distributed(_train, 1, tiny_overrides(data, str(work / "once"), **{"train.duration": "5 iterations"}), [3], timeout=300)
    assert r["error"] is None and r["iteration"] == 5
    assert r["skipped"] == 1 and r["nonfinite"] == 1
    assert math.isnan(r["losses"][3]) and all(math.isfinite(r["losses"][i]) for i in (1, 2, 4, 5))
    assert r["unchanged"][3], "a skipped step must not touch weights or the LR schedule"
    assert not r["unchanged"][4], "training continues after the skipped step"


def test_consecutive_nonfinite_steps_stop_with_last_good_checkpoint(corpus):
    work, data = corpus
    save = work / "diverge_ckpt"
    overrides = tiny_overrides(data, str(work / "diverge"), **{
        "train.duration": "10 iterations", "checkpoint.save": str(save), "checkpoint.interval": 2, "stability.max_consecutive_nonfinite": 3})
    (r,) = run_distributed(_train, 1, overrides, [3, 4, 5, 6, 7, 8], timeout=300)
    assert r["error"] is not None and r["iteration"] == 5
    assert "3 consecutive iterations ending at 5" in r["error"]
    assert str(save / "iter_0000002") in r["error"], r["error"]
    # No save during the streak: iteration 4 would have been saved otherwise.
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert not (save / "iter_0000004").exists()
