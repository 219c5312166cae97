"""megactllm's own chat format (ChatML), and the tokenizer-picked format behind the old names.

ChatML renders each turn closed by a newline:

    <|im_start|>system\n{content}<|im_end|>\n
    <|im_start|>user\n{content}<|im_end|>\n
    <|im_start|>assistant\n{content}<|im_end|>\n

`<|im_start|>` and `<|im_end|>` must be single tokens of the tokenizer (add them with the
vocabulary extension of megactllm.tokenizer). No BOS/EOS is added: the model learns to end an
answer with `<|im_end|>`, and generation stops there. A prompt for generation ends with the open
assistant header (`add_generation_prompt=True`).

Three faces of the same format, kept identical by tests:
- `CHAT_TEMPLATE`: the Jinja string for an HF tokenizer_config.json `chat_template`;
- `render(messages)`: the same text from Python;
- `tokenize_conversation(tokenizer, messages)`: the ids as HF's `apply_chat_template(messages,
  tokenize=True)` gives them with the exported tokenizer, plus the loss mask (1 on each assistant
  turn's content and its closing end token, 0 elsewhere).

The token-level functions here (`tokenize_conversation`, `generation_prompt_tokens`,
`stop_token_id`, `check_chat_tokens`) use the format the tokenizer carries (chat_formats.py):
ChatML for our tokenizers and Qwen's, Llama-3's for a Llama-3 tokenizer.
"""
from __future__ import annotations

from collections.abc import Sequence

from megactllm.tokenizer.chat_formats import (  # noqa: F401 (re-exported names)
    CHAT_SPECIAL_TOKENS,
    CHATML,
    IM_END,
    IM_START,
    ROLES,
    ChatFormatError,
    ChatTokenizationError,
    TokenizedConversation,
    chat_format_of,
)

__all__ = [
    "CHAT_SPECIAL_TOKENS", "CHAT_TEMPLATE", "IM_END", "IM_START", "ROLES", "TEMPLATE_NAME", "ChatFormatError",
    "ChatTokenizationError", "TokenizedConversation", "assistant_char_spans", "check_chat_tokens",
    "generation_prompt_tokens", "render", "stop_token_id", "tokenize_conversation",
]

TEMPLATE_NAME = CHATML.name
CHAT_TEMPLATE = CHATML.jinja


def render(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as ChatML text, exactly as CHAT_TEMPLATE renders it."""
    return CHATML.render(messages, add_generation_prompt)


def assistant_char_spans(messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """ChatML text and the [start, end) character spans that are trained: each assistant turn's
    content plus its closing <|im_end|>."""
    return CHATML.assistant_char_spans(messages)


def check_chat_tokens(tokenizer) -> dict[str, int]:
    """Ids of the special tokens of the tokenizer's chat format; a clear error where it has none."""
    return chat_format_of(tokenizer).check_tokens(tokenizer)


def tokenize_conversation(tokenizer, messages: Sequence[dict]) -> TokenizedConversation:
    """Ids of the conversation in the tokenizer's chat format, with the assistant-only loss mask."""
    return chat_format_of(tokenizer).tokenize(tokenizer, messages)


def generation_prompt_tokens(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Prompt ids for generation: the conversation so far plus the open assistant header."""
    return chat_format_of(tokenizer).generation_prompt_tokens(tokenizer, messages)


def stop_token_id(tokenizer) -> int:
    """Generation stops at the format's end-of-turn token (<|im_end|>, <|eot_id|>)."""
    fmt = chat_format_of(tokenizer)
    return fmt.check_tokens(tokenizer)[fmt.end_token]
