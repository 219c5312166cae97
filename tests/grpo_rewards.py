"""Rewards a tiny random model can learn within minutes on CPU, written as TRL reward functions (module:function)."""

MAX_TOKENS = 8  # the tests' grpo.max_completion_tokens


def band_tokens(prompts, completions, completion_ids, **columns):
    """The share of the completion's MAX_TOKENS positions holding a piece with id in [262, 300): about 4% of a
    random 1000-piece model's samples (ids below 262 are specials and bytes; stopping early earns nothing)."""
    return [min(sum(262 <= t < 300 for t in ids) / MAX_TOKENS, 1.0) for ids in completion_ids]


def fails_on_long_questions(prompts, completions, **columns):
    """Raises for a question longer than 90 characters: a broken user reward, to stop the run by name."""
    for question in prompts:
        if len(question) > 90:
            raise ValueError("question too long for this reward")
    return [0.0] * len(completions)
