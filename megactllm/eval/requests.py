"""The requests every backend answers, as lm-eval 0.4 defines them, over token ids.

- loglikelihood(context, continuation) -> (sum of log p(continuation | context), is_greedy)
- loglikelihood_rolling(text) -> the same over a whole text in windows (bits per byte, perplexity)
- generate_until(context, stop strings, max tokens) -> text

Text is turned into ids here exactly as lm-eval's HFLM does it (`encode_pair`), so a backend only
ever sees ids. Requests that share a prefix are grouped so a backend computes that prefix once
for all its continuations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from megactllm.eval.errors import EvalSetupError


@dataclass(frozen=True)
class TokenRequest:
    context: tuple[int, ...]
    continuation: tuple[int, ...]


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str) -> TokenRequest:
    """lm-eval's split: trailing whitespace of the context moves to the continuation; the whole
    string is encoded and the continuation is what follows the encoded context's length."""
    if not context:
        raise ValueError("an empty context needs the backend's prefix token; use TokenRequest directly")
    stripped = context.rstrip()
    if len(stripped) < len(context):
        continuation = context[len(stripped):] + continuation
        context = stripped
    whole = encode(context + continuation)
    ctx = encode(context)
    return TokenRequest(tuple(ctx), tuple(whole[len(ctx):]))


def truncated(request: TokenRequest, max_length: int) -> TokenRequest:
    """Left truncation to the model's window, as lm-eval does: the model reads
    (context + continuation)[-(max_length + 1):][:-1]; the prefix is what precedes continuation[:-1]."""
    ctx, cont = request.context, request.continuation
    if not cont:
        raise ValueError("a request needs at least one continuation token")
    if len(cont) > max_length:
        raise EvalSetupError(f"continuation of {len(cont)} tokens does not fit the model's {max_length}-token window")
    if len(ctx) + len(cont) - 1 <= max_length:
        return request
    inputs = (ctx + cont)[-(max_length + 1):][:-1]
    return TokenRequest(tuple(inputs[: len(inputs) - (len(cont) - 1)]), cont)


@dataclass
class PrefixGroup:
    """Requests that read the same prefix: the prefix is run once, then each continuation."""

    prefix: tuple[int, ...]
    members: list[tuple[int, tuple[int, ...]]]  # (request index, continuation ids)

    @property
    def single_token(self) -> bool:
        return all(len(c) == 1 for _, c in self.members)


def group_by_prefix(requests: Sequence[TokenRequest], max_length: int) -> list[PrefixGroup]:
    """Groups longest first (the first batch shows an out-of-memory at once, as lm-eval orders)."""
    groups: dict[tuple, PrefixGroup] = {}
    for i, request in enumerate(requests):
        r = truncated(request, max_length)
        groups.setdefault(r.context, PrefixGroup(r.context, [])).members.append((i, r.continuation))
    return sorted(groups.values(), key=lambda g: -(len(g.prefix) + max(len(c) for _, c in g.members)))


def prefix_token(bos_id: Optional[int], eos_id: Optional[int], where: str = "the tokenizer") -> int:
    """The token a text with no context is read after (the first of every rolling window), by
    lm-eval 0.4's rule (HFLM.prefix_token_id, lm_eval/models/huggingface.py): the tokenizer's BOS
    id, else its EOS id (Qwen's <|endoftext|>). Every backend asks here, so all build the same requests."""
    if bos_id is not None:
        return int(bos_id)
    if eos_id is None:
        raise EvalSetupError(f"{where} names neither a BOS nor an EOS token: no token to start a text from")
    return int(eos_id)


def rolling_requests(tokens: Sequence[int], prefix_token: int, max_length: int, stride: int) -> list[TokenRequest]:
    """Windows that score every token of `tokens` exactly once, each with up to max_length tokens
    of left context (the first token is predicted from `prefix_token`). stride <= max_length:
    a window advances by stride tokens and scores only those, seeing the previous ones as context."""
    if not 0 < stride <= max_length:
        raise ValueError(f"stride must be in 1..max_length ({max_length}), got {stride}")
    full = [prefix_token] + list(tokens)
    out = []
    for start in range(1, len(full), stride):
        end = min(start + stride, len(full))
        first_input = max(0, end - 1 - max_length)
        out.append(TokenRequest(tuple(full[first_input:start]), tuple(full[start:end])))
    return out
