"""A tiny model learns an easy reward with GRPO: the mean reward rises from near 0 to above 0.8.

About 100 s of CPU (100 steps of 4 prompts x 8 completions), so it runs only with
MEGACTLLM_SLOW_TESTS=1:

    MEGACTLLM_SLOW_TESTS=1 python -m pytest -q -s tests/test_grpo_learning.py
"""
import os

import pytest
from grpo_parallel import grpo_run
from test_grpo_stage import SEQ, prompts, tiny_tokenizer  # noqa: F401  (module fixtures)

from megactllm.testing import run_distributed

pytestmark = pytest.mark.skipif(not os.environ.get("MEGACTLLM_SLOW_TESTS"), reason="slow (~100 s): MEGACTLLM_SLOW_TESTS=1")


def test_the_mean_reward_rises_above_point_eight(tiny_tokenizer, prompts, tmp_path):  # noqa: F811
    extra = ("train.duration=100 iterations", "grpo.rewards=[grpo_rewards:band_tokens]", "grpo.max_completion_tokens=8",
             "grpo.group_size=8", "grpo.prompts_per_step=4", "train.micro_batch_size=2", "optim.lr=2e-3", "optim.min_lr=2e-3")
    (records,) = run_distributed(grpo_run, 1, str(tmp_path), tiny_tokenizer, prompts, SEQ, 1, 1, extra, timeout=900)
    rewards = [r["metrics"]["reward_mean"] for r in records]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    print(f"grpo learning: reward_mean over steps 1-10 {first:.3f}, steps 91-100 {last:.3f}; every 10th: "
          f"{[round(r, 3) for r in rewards[::10]]}")
    assert first < 0.15
    assert last > 0.8
