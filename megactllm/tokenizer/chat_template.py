"""The one chat format of megactllm models, for SFT, DPO, the HF export and generation.

A conversation is a list of {"role": "system"|"user"|"assistant", "content": str} turns, rendered
ChatML-style, each turn closed by a newline:

    <|im_start|>system\n{content}<|im_end|>\n
    <|im_start|>user\n{content}<|im_end|>\n
    <|im_start|>assistant\n{content}<|im_end|>\n

`<|im_start|>` and `<|im_end|>` must be single tokens of the tokenizer (add them with the
vocabulary extension of megactllm.tokenizer); `check_chat_tokens` refuses a tokenizer that would
split them. No BOS/EOS is added: the model learns to end an answer with `<|im_end|>`, and
generation stops there. A prompt for generation ends with the open assistant header
(`add_generation_prompt=True`).

Three faces of the same format, kept identical by tests:
- `CHAT_TEMPLATE`: the Jinja string for an HF tokenizer_config.json `chat_template`;
- `render(messages)`: the same text from Python;
- `tokenize_conversation(tokenizer, messages)`: the ids of `render(messages)` exactly as HF's
  `apply_chat_template(messages, tokenize=True)` gives them with the exported tokenizer (that is
  `tokenizer.encode(render(messages))` less SentencePiece's dummy-prefix "▁" before the first
  `<|im_start|>`), plus the loss mask: 1 on each assistant turn's content and its closing `<|im_end|>`, 0 elsewhere
  (system and user turns, role headers, the newlines between turns).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from megactllm.errors import UserError

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHAT_SPECIAL_TOKENS = (IM_START, IM_END)
ROLES = ("system", "user", "assistant")
TEMPLATE_NAME = "megactllm-chatml-v1"

# The Jinja face of render(); HF's apply_chat_template passes `messages` and `add_generation_prompt`.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\n' }}"
    "{%- endif -%}"
)


class ChatFormatError(UserError, ValueError):
    """A conversation that the template cannot render (unknown role, empty, no assistant turn...)."""


class ChatTokenizationError(UserError, ValueError):
    """The tokenizer cannot carry the template (missing special tokens, merges across a boundary)."""


def _header(role: str) -> str:
    return f"{IM_START}{role}\n"


def _check_messages(messages: Sequence[dict]) -> None:
    if not messages:
        raise ChatFormatError("empty conversation")
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatFormatError(f"turn {i}: role {role!r} is not one of {ROLES}")
        if not isinstance(content, str):
            raise ChatFormatError(f"turn {i}: content must be a string, got {type(content).__name__}")
        if role == "system" and i != 0:
            raise ChatFormatError(f"turn {i}: a system turn may only come first")


def render(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text, exactly as CHAT_TEMPLATE renders it."""
    _check_messages(messages)
    text = "".join(f"{_header(m['role'])}{m['content']}{IM_END}\n" for m in messages)
    if add_generation_prompt:
        text += _header("assistant")
    return text


def assistant_char_spans(messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Rendered text and the [start, end) character spans that are trained: each assistant turn's
    content plus its closing <|im_end|> (so the model learns where to stop)."""
    _check_messages(messages)
    parts, spans, offset = [], [], 0
    for m in messages:
        header = _header(m["role"])
        turn = f"{header}{m['content']}{IM_END}\n"
        if m["role"] == "assistant":
            start = offset + len(header)
            spans.append((start, start + len(m["content"]) + len(IM_END)))
        parts.append(turn)
        offset += len(turn)
    return "".join(parts), spans


def check_chat_tokens(tokenizer) -> dict[str, int]:
    """Ids of the template's special tokens; a clear error where the tokenizer lacks them."""
    ids = {}
    for piece in CHAT_SPECIAL_TOKENS:
        token_id = tokenizer.token_to_id(piece)
        if token_id is None or tokenizer.encode(f"a{piece}b").count(token_id) != 1:
            raise ChatTokenizationError(
                f"tokenizer {getattr(tokenizer, 'model_path', tokenizer)} has no single token {piece!r}; "
                f"extend its vocabulary with {list(CHAT_SPECIAL_TOKENS)} (megactllm.tokenizer vocabulary "
                "extension) and resize the model's embeddings"
            )
        ids[piece] = token_id
    return ids


@dataclass
class TokenizedConversation:
    tokens: np.ndarray  # int64 [n]
    loss_mask: np.ndarray  # uint8 [n], 1 where the token is trained (assistant content + <|im_end|>)

    def __len__(self) -> int:
        return len(self.tokens)


def _leading_artifacts(tokenizer) -> list[int]:
    """Ids a tokenizer puts before a text that starts with a special token: SentencePiece's dummy
    prefix "▁" (HF's Metaspace emits none there). Dropped, so that our ids equal HF's
    apply_chat_template ids and a prompt looks the same in training and in generation."""
    ids = tokenizer.encode(IM_START)
    return ids[:-1]


def _encode_rendered(tokenizer, text: str) -> tuple[list[int], int]:
    """(ids of a rendered text, number of leading artifact ids that were dropped)."""
    ids = tokenizer.encode(text)
    artifacts = _leading_artifacts(tokenizer)
    if artifacts and text.startswith(IM_START) and ids[: len(artifacts)] == artifacts:
        return ids[len(artifacts) :], len(artifacts)
    return ids, 0


def tokenize_conversation(tokenizer, messages: Sequence[dict]) -> TokenizedConversation:
    """Ids of render(messages), as HF's apply_chat_template gives them, with a loss mask over the
    assistant turns.

    Token boundaries are found by encoding the text up to each span edge: the prefix's tokens must
    be a prefix of the whole text's tokens (true when no token merges across the edge; edges sit
    next to special tokens or a newline, which the supported tokenizers never merge across).
    """
    text, spans = assistant_char_spans(messages)
    raw = tokenizer.encode(text)
    tokens, dropped = _encode_rendered(tokenizer, text)
    mask = np.zeros(len(tokens), dtype=np.uint8)
    cache: dict[int, int] = {}

    def token_edge(char_offset: int) -> int:
        if char_offset not in cache:
            prefix = tokenizer.encode(text[:char_offset])
            if raw[: len(prefix)] != prefix:
                raise ChatTokenizationError(
                    f"tokenizer merges tokens across the template boundary at character {char_offset} "
                    f"({text[max(0, char_offset - 20):char_offset + 20]!r}); the loss mask would be wrong"
                )
            cache[char_offset] = len(prefix) - dropped
        return cache[char_offset]

    for start, end in spans:
        mask[token_edge(start) : token_edge(end)] = 1
    return TokenizedConversation(np.asarray(tokens, dtype=np.int64), mask)


def generation_prompt_tokens(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Prompt ids for generation: the conversation so far plus the open assistant header."""
    return _encode_rendered(tokenizer, render(messages, add_generation_prompt=True))[0]


def stop_token_id(tokenizer) -> int:
    """Generation stops at <|im_end|>."""
    return check_chat_tokens(tokenizer)[IM_END]
