"""SFT then DPO through the shared training loop (DDP, optimizer, schedules) at PP=2."""
import math

import pytest
from chat_fixtures import SEQ
from chat_parallel import sft_then_dpo_through_the_loop

from megactllm.testing import run_distributed

# Fixtures shared across the SFT/DPO test modules (one instance per session, not per module).
pytest_plugins = ["chat_fixtures"]


def test_sft_then_dpo_from_its_checkpoint(chat_sp_model, sft_prefixes, dpo_prefix, tmp_path):
    blend = f"['4', '{sft_prefixes['zh']}', '1', '{sft_prefixes['en']}']"
    results = run_distributed(sft_then_dpo_through_the_loop, 2, str(tmp_path), str(chat_sp_model), blend, dpo_prefix, SEQ, 2,
                              timeout=600)
    sft_losses, dpo_losses, first = results[0]
    assert len(sft_losses) == 2 and all(math.isfinite(v) for v in sft_losses.values())
    assert len(dpo_losses) == 2 and all(math.isfinite(v) for v in dpo_losses.values())
    # Policy and reference both start from the SFT checkpoint: zero rewards, loss log 2, at step 1.
    assert dpo_losses[1] == pytest.approx(math.log(2), abs=1e-4)
    assert first["rewards/margin"] == pytest.approx(0.0, abs=1e-4)
    assert first["logps/chosen"] < 0
