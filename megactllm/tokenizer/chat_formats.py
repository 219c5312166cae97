"""Chat formats: how a model family writes a conversation, for SFT, DPO, generation and serving.

A conversation is a list of {"role": "system"|"user"|"assistant", "content": str} turns. Each format
gives the same four things:
- `render(messages, add_generation_prompt)`: the text, exactly as the format's Jinja template
  (`jinja`, and the family's own tokenizer_config.json template) renders it;
- `assistant_char_spans(messages)`: the character spans that are trained, each assistant turn's
  content plus the turn's end token (so the model learns where to stop);
- `generation_prompt_tokens(tokenizer, messages)`: the prompt ids, ending with the open assistant header;
- `stop_tokens`: where generation ends.

Two formats are known:
- ChatML (megactllm's own, and Qwen's): `<|im_start|>{role}\n{content}<|im_end|>\n` per turn, no BOS.
- Llama-3: `<|begin_of_text|>` once, then `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>`
  per turn, the content trimmed of surrounding whitespace as Llama-3's template does (`| trim`).

`chat_format_of(tokenizer)` picks the format from the tokenizer: a chat template that names one
format's tokens wins; otherwise a vocabulary with Llama-3's header tokens is Llama-3, and anything
else is ChatML (whose token check refuses a tokenizer with neither set, naming what to add).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from megactllm.errors import UserError

ROLES = ("system", "user", "assistant")

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHAT_SPECIAL_TOKENS = (IM_START, IM_END)

BEGIN_OF_TEXT = "<|begin_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
LLAMA3_SPECIAL_TOKENS = (BEGIN_OF_TEXT, START_HEADER, END_HEADER, EOT)


class ChatFormatError(UserError, ValueError):
    """A conversation that the template cannot render (unknown role, empty, no assistant turn...)."""


class ChatTokenizationError(UserError, ValueError):
    """The tokenizer cannot carry the template (missing special tokens, merges across a boundary)."""


@dataclass
class TokenizedConversation:
    tokens: np.ndarray  # int64 [n]
    loss_mask: np.ndarray  # uint8 [n], 1 where the token is trained (assistant content + its end token)

    def __len__(self) -> int:
        return len(self.tokens)


def check_messages(messages: Sequence[dict]) -> None:
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


def piece_id(tokenizer, piece: str) -> Optional[int]:
    """Id of a special piece in a megactllm tokenizer or a transformers one; None when absent."""
    if hasattr(tokenizer, "token_to_id"):
        return tokenizer.token_to_id(piece)
    token_id = tokenizer.convert_tokens_to_ids(piece)  # transformers: unknown -> unk id or None
    if not isinstance(token_id, int) or token_id == getattr(tokenizer, "unk_token_id", None):
        return None
    return token_id


class ChatFormat:
    name: str  # stored beside preprocessed data
    jinja: str  # the template for an HF tokenizer_config.json
    special_tokens: tuple[str, ...]  # each must be a single token; the first opens every rendered text
    marker: str  # a token whose presence in a chat template names this format
    end_token: str  # closes every turn; trained after an assistant's content
    begin: str = ""  # text once before the first turn
    after_end: str = ""  # text after each turn's end token (not trained)

    def header(self, role: str) -> str:
        raise NotImplementedError

    def content(self, text: str) -> str:
        """The content as the template writes it."""
        return text

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        return (self.end_token,)

    # ---------------------------------------------------------------- text
    def assistant_char_spans(self, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
        """Rendered text and the [start, end) character spans that are trained."""
        check_messages(messages)
        parts, spans, offset = [self.begin], [], len(self.begin)
        for m in messages:
            header, body = self.header(m["role"]), self.content(m["content"])
            turn = f"{header}{body}{self.end_token}{self.after_end}"
            if m["role"] == "assistant":
                start = offset + len(header)
                spans.append((start, start + len(body) + len(self.end_token)))
            parts.append(turn)
            offset += len(turn)
        return "".join(parts), spans

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        """The conversation as text, exactly as `jinja` renders it."""
        text = self.assistant_char_spans(messages)[0]
        return text + self.header("assistant") if add_generation_prompt else text

    # ---------------------------------------------------------------- tokens
    def check_tokens(self, tokenizer) -> dict[str, int]:
        """Ids of the format's special tokens; a clear error where the tokenizer lacks them."""
        ids = {}
        for piece in self.special_tokens:
            token_id = tokenizer.token_to_id(piece)
            if token_id is None or tokenizer.encode(f"a{piece}b").count(token_id) != 1:
                raise ChatTokenizationError(
                    f"tokenizer {getattr(tokenizer, 'model_path', tokenizer)} has no single token {piece!r}; "
                    f"extend its vocabulary with {list(self.special_tokens)} (megactllm.tokenizer vocabulary "
                    f"extension) and resize the model's embeddings, or use a tokenizer with Llama-3's "
                    f"{list(LLAMA3_SPECIAL_TOKENS)}"
                )
            ids[piece] = token_id
        return ids

    def stop_token_ids(self, tokenizer) -> list[int]:
        return [i for i in (piece_id(tokenizer, p) for p in self.stop_tokens) if i is not None]

    def _encode_rendered(self, tokenizer, text: str) -> tuple[list[int], int]:
        """(ids of a rendered text, number of leading ids dropped). A tokenizer may put ids before a
        text that starts with a special token (SentencePiece's dummy prefix "▁"; HF's Metaspace
        emits none there): dropped, so that our ids equal HF's apply_chat_template ids and a prompt
        looks the same in training and in generation."""
        ids = tokenizer.encode(text)
        opening = self.special_tokens[0]  # the special token every rendered text starts with
        artifacts = tokenizer.encode(opening)[:-1]
        if artifacts and text.startswith(opening) and ids[: len(artifacts)] == artifacts:
            return ids[len(artifacts):], len(artifacts)
        return ids, 0

    def tokenize(self, tokenizer, messages: Sequence[dict]) -> TokenizedConversation:
        """Ids of render(messages), as HF's apply_chat_template gives them, with the loss mask.

        Token boundaries are found by encoding the text up to each span edge: the prefix's tokens
        must be a prefix of the whole text's tokens (true when no token merges across the edge;
        edges sit next to special tokens or newlines, which the supported tokenizers never merge
        across; where one does, the conversation is refused rather than mis-masked).
        """
        text, spans = self.assistant_char_spans(messages)
        raw = tokenizer.encode(text)
        tokens, dropped = self._encode_rendered(tokenizer, text)
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
            mask[token_edge(start): token_edge(end)] = 1
        return TokenizedConversation(np.asarray(tokens, dtype=np.int64), mask)

    def generation_prompt_tokens(self, tokenizer, messages: Sequence[dict]) -> list[int]:
        """Prompt ids for generation: the conversation so far plus the open assistant header."""
        return self._encode_rendered(tokenizer, self.render(messages, add_generation_prompt=True))[0]

    def __repr__(self) -> str:
        return f"<chat format {self.name}>"


class ChatML(ChatFormat):
    name = "megactllm-chatml-v1"
    special_tokens = CHAT_SPECIAL_TOKENS
    marker = IM_START
    end_token = IM_END
    after_end = "\n"
    jinja = (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}"
        "{{ '<|im_start|>assistant\n' }}"
        "{%- endif -%}"
    )

    def header(self, role: str) -> str:
        return f"{IM_START}{role}\n"


class Llama3(ChatFormat):
    name = "megactllm-llama3-v1"
    special_tokens = LLAMA3_SPECIAL_TOKENS
    marker = START_HEADER
    end_token = EOT
    begin = BEGIN_OF_TEXT
    jinja = (
        "{{- '<|begin_of_text|>' }}"
        "{%- for message in messages %}"
        "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}"
        "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
        "{%- endif %}"
    )

    def header(self, role: str) -> str:
        return f"{START_HEADER}{role}{END_HEADER}\n\n"

    def content(self, text: str) -> str:
        return text.strip()  # Jinja's `trim` is str.strip()


CHATML = ChatML()
LLAMA3 = Llama3()
FORMATS = (LLAMA3, CHATML)  # in the order the vocabulary decides (a tokenizer with both is Llama-3's)


def _in_vocabulary(fmt: ChatFormat, tokenizer) -> bool:
    wanted = (fmt.marker, fmt.end_token)  # the tokens that say "this family's chat"
    return all(piece_id(tokenizer, p) is not None for p in wanted)


def chat_format_of(tokenizer, required: bool = True) -> Optional[ChatFormat]:
    """The chat format a tokenizer (megactllm's or transformers') carries.

    required=True: the format's tokens are checked to encode as single tokens, and a tokenizer with
    neither format's tokens is refused (ChatTokenizationError naming the tokens to add).
    required=False: a vocabulary look-up only; None for a base tokenizer with neither set.
    """
    present = [f for f in FORMATS if _in_vocabulary(f, tokenizer)]
    template = getattr(tokenizer, "chat_template", None)
    named = [f for f in present if isinstance(template, str) and f.marker in template]
    fmt = (named or present or [None])[0]
    if not required:
        return fmt
    fmt = fmt or CHATML
    fmt.check_tokens(tokenizer)
    return fmt
