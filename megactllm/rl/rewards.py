"""Reward functions for GRPO, called with TRL's signature so functions written for TRL work unchanged:

    fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]

`columns` are the prompt file's other fields (`answer`, `id`, ...), one value per completion, plus
`completion_ids` (token ids) as TRL passes them. A None is "no opinion" (TRL's convention): it
counts as nothing in the weighted sum.

Built in:
    math    1.0 when the completion's final answer equals the `answer` column (megactllm.rl.answers)
    format  1.0 when the completion states its answer in a marked form the checker reads first
            (\\boxed{...}, `#### x`, or <answer>...</answer>), else 0.0
    module:function   a user's function, imported once at start-up
"""
from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from megactllm.errors import UserError
from megactllm.rl.answers import answers_match, extract_answer


class RewardError(UserError, ValueError):
    """A reward that cannot be imported, or one that raised or returned the wrong thing."""


def math_reward(prompts, completions, answer=None, **columns) -> list[float]:
    if answer is None:
        raise RewardError("the math reward needs an `answer` field in every prompt record")
    return [float(answers_match(c, a)) for c, a in zip(completions, answer, strict=True)]


_MARKED = re.compile(r"\\boxed\s*\{.+\}|####\s*\S|<answer>.+?</answer>", re.DOTALL)


def format_reward(prompts, completions, **columns) -> list[float]:
    return [float(bool(_MARKED.search(c)) and extract_answer(c) is not None) for c in completions]


BUILTIN: dict[str, Callable] = {"math": math_reward, "format": format_reward}


def resolve_reward(spec: str) -> Callable:
    """`math`, `format` or `module:function` -> the function; an unimportable one is a RewardError."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" not in spec:
        raise RewardError(f"grpo.rewards: {spec!r} is neither a built-in reward {sorted(BUILTIN)} nor module:function")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # an ImportError, or the module's own error while importing
        raise RewardError(f"grpo.rewards: cannot import module {module_name!r} for reward {spec!r}: {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RewardError(f"grpo.rewards: module {module_name!r} has no function {attr!r} (reward {spec!r})")
    return fn


@dataclass
class RewardSet:
    """The run's reward functions and weights; `score` gives each completion's weighted reward."""

    names: list[str]
    functions: list[Callable]
    weights: list[float]

    @classmethod
    def from_specs(cls, specs: Sequence[str], weights: Sequence[float] | None = None) -> "RewardSet":
        if not specs:
            raise RewardError("grpo.rewards is empty: name at least one reward (math, format or module:function)")
        weights = list(weights) if weights else [1.0] * len(specs)
        if len(weights) != len(specs):
            raise RewardError(f"grpo.reward_weights has {len(weights)} values for {len(specs)} rewards {list(specs)}")
        return cls(list(specs), [resolve_reward(s) for s in specs], [float(w) for w in weights])

    def _call(self, k: int, prompts, completions, columns: dict, where: Sequence[str]) -> list[float]:
        name, fn = self.names[k], self.functions[k]
        try:
            values = fn(prompts=list(prompts), completions=list(completions), **columns)
        except Exception as e:
            # Name the prompt: run it alone, one at a time, until it raises again.
            for i in range(len(completions)):
                one = {c: [v[i]] for c, v in columns.items()}
                try:
                    fn(prompts=[prompts[i]], completions=[completions[i]], **one)
                except Exception as e_one:
                    raise RewardError(
                        f"reward {name!r} raised {type(e_one).__name__}: {e_one} on {where[i]} "
                        f"(question: {str(prompts[i])[:80]!r})"
                    ) from None
            raise RewardError(f"reward {name!r} raised {type(e).__name__}: {e} on a batch of {len(completions)} completions") from None
        values = list(values) if values is not None else []
        if len(values) != len(completions):
            raise RewardError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions")
        out = []
        for i, v in enumerate(values):
            if v is None:
                out.append(math.nan)
                continue
            try:
                out.append(float(v))
            except (TypeError, ValueError):
                raise RewardError(f"reward {name!r} returned {v!r} (not a number) for {where[i]}") from None
        return out

    def score(self, prompts: Sequence[str], completions: Sequence[str], columns: dict, where: Sequence[str]):
        """(weighted total per completion, per-function values [function][completion]); NaN (None) adds nothing."""
        per_function = [self._call(k, prompts, completions, columns, where) for k in range(len(self.functions))]
        totals = []
        for i in range(len(completions)):
            parts = [w * vals[i] for w, vals in zip(self.weights, per_function) if not math.isnan(vals[i])]
            totals.append(sum(parts) if parts else math.nan)
        return totals, per_function
