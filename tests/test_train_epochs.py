"""Epoch-based stopping: the run's length counts epochs of the data, not of the epoch-wrapped view."""
import pytest

from megactllm.config import load_config
from megactllm.data.chat.sft_dataset import EpochDataset
from megactllm.training.schedule import resolve_train_iters


@pytest.mark.parametrize("epochs,expected_steps", [(0.5, 3), (1, 5), (2, 10), (2.5, 13)])
def test_epochs_set_the_number_of_steps_and_the_data_never_runs_dry(epochs, expected_steps):
    base = list(range(20))
    cfg = load_config(None, ["train.stage=sft", f"train.duration={epochs} epochs", "train.global_batch_size=4"])
    wrapped = EpochDataset(base, epochs, cfg.train.global_batch_size, seed=1)
    steps = resolve_train_iters(cfg, wrapped.samples_per_epoch)
    assert steps == expected_steps
    # Every sample the run reads exists, and each full pass sees every base sample once.
    read = [wrapped[i] for i in range(steps * cfg.train.global_batch_size)]
    for start in range(0, int(epochs) * len(base), len(base)):
        assert sorted(read[start : start + len(base)]) == base
