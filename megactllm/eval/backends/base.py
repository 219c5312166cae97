"""What every backend answers (lm-eval's three requests, over token ids) and the shared batching."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Optional, Sequence

from megactllm.eval.requests import PrefixGroup, TokenRequest, prefix_token

Progress = Optional[Callable[[int], None]]  # called with the number of requests just answered


class Backend(ABC):
    name: str = ""
    max_length: int = 2048
    batch_size: int = 8
    # Whether this process reports (rank 0 of a parallel run; always for a single process).
    is_reporting_rank: bool = True

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of text as the model was trained to read it (BOS when the tokenizer adds one)."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @property
    @abstractmethod
    def bos_token_id(self) -> Optional[int]:
        """The tokenizer's BOS id, None when it has none (Qwen)."""

    @property
    @abstractmethod
    def eos_token_id(self) -> Optional[int]:
        """The tokenizer's EOS / end-of-document id."""

    @property
    def prefix_token_id(self) -> int:
        """The token a rolling window starts from: one rule for every backend (requests.prefix_token)."""
        return prefix_token(self.bos_token_id, self.eos_token_id, where=f"the {self.name} backend's tokenizer")

    @abstractmethod
    def loglikelihood(self, requests: Sequence[TokenRequest], progress: Progress = None) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is the greedy choice) per request."""

    @abstractmethod
    def greedy_generate(self, contexts: Sequence[Sequence[int]], max_new_tokens: int,
                        stop: Sequence[str] = ()) -> list[str]:
        """Greedy continuation text of each context, cut at the first stop string."""

    @abstractmethod
    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Prompt ids of a conversation through the model's chat template (generation tasks)."""

    @abstractmethod
    def chat_stop_strings(self) -> list[str]:
        """Strings that end a chat answer."""

    def gather_results(self, values: list) -> list:
        """A parallel backend answers its own shard; this restores the full list (identity here)."""
        return values


def batches_of_groups(groups: list[PrefixGroup], batch_size: int, token_budget: Optional[int] = None):
    """Consecutive groups (already sorted by length) in batches of at most batch_size rows and,
    when given, at most token_budget padded tokens, so long few-shot prompts come in smaller batches."""
    batch: list[PrefixGroup] = []
    for group in groups:
        longest = max([len(g.prefix) for g in batch + [group]])
        if batch and (len(batch) >= batch_size or (token_budget and longest * (len(batch) + 1) > token_budget)):
            yield batch
            batch = []
        batch.append(group)
    if batch:
        yield batch


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if s and i >= 0:
            cut = min(cut, i)
    return text[:cut]
