"""A few DPO steps on real preference pairs raise the reward margin and the reward accuracy."""
import pytest
from chat_fixtures import SEQ
from chat_parallel import dpo_training_run

from megactllm.config import load_config
from megactllm.data.chat.dpo_dataset import build_dpo_datasets
from megactllm.testing import run_distributed

# Fixtures shared across the SFT/DPO test modules (one instance per session, not per module).
pytest_plugins = ["chat_fixtures"]


def test_dpo_steps_raise_margin_and_accuracy(chat_tokenizer, dpo_prefix, tiny_checkpoint):
    cfg = load_config(None, [f"model.seq_length={SEQ}", f"data.train_data_path=['{dpo_prefix}']"])
    train = build_dpo_datasets(cfg, chat_tokenizer)[0]
    items = [train[i] for i in range(8)]
    (reports,) = run_distributed(dpo_training_run, 1, tiny_checkpoint, items, 4, 1e-3, 4, SEQ, 0.5, timeout=300)
    first, last = reports[0], reports[-1]
    # Policy == reference at the start: zero rewards, loss log(2), no pair counted as won.
    assert first["rewards/margin"] == pytest.approx(0.0, abs=1e-5)
    assert first["dpo loss"] == pytest.approx(0.6931, abs=1e-3)
    assert first["rewards/accuracy"] == 0.0
    assert last["rewards/margin"] > 0.5
    assert last["rewards/accuracy"] >= 0.75
    assert last["dpo loss"] < first["dpo loss"]
    margins = [r["rewards/margin"] for r in reports]
    assert margins == sorted(margins), f"margin should grow step by step: {margins}"
