"""Example reward functions for `grpo.rewards: [grpo_rewards:NAME]` (run with PYTHONPATH=examples).

They have TRL's signature, fn(prompts, completions, **columns) -> list[float | None], so functions
written for TRL's GRPOTrainer work unchanged; `columns` holds the prompt file's other fields
(`answer`, ...) and `completion_ids`.
"""


def digits(prompts, completions, **columns):
    """Up to 1.0 for a completion that writes at least 4 digits: a reward a tiny random model reaches
    on CPU within minutes (examples/configs/tiny_grpo.yaml), to watch GRPO work before a real run."""
    return [min(sum(ch.isdigit() for ch in text) / 4, 1.0) for text in completions]


def answer_length_penalty(prompts, completions, answer, **columns):
    """A TRL-style shaping term: -0.001 per character beyond 400 (None where there is no answer)."""
    return [None if a is None else -0.001 * max(len(c) - 400, 0) for c, a in zip(completions, answer)]
