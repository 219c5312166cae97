"""Reinforcement learning with verifiable rewards: what GRPO needs besides the parallel model.

    answers.py      the math answer checker (zh and en: integers, decimals, fractions, percentages,
                    `####` and `\\boxed{}` answers), shared with `megactllm evaluate --tasks math`
    rewards.py      reward functions (math, format, a user's `module:function` with TRL's signature)
    advantages.py   group-relative advantages
    prompts.py      prompt files ({question, answer} jsonl) rendered through the chat template
    engine.py       the rollout engine interface and the transformers engine

The stage and its loss live in megactllm.training.stages.grpo.
"""
