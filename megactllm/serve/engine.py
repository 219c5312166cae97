"""The one small interface every inference engine answers, whatever runs the model underneath.

An engine tokenizes plain text exactly as training did, renders a chat with the model's own chat
template, and generates with the engine's own sampler and KV cache (llama.cpp's, transformers').
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

from megactllm.errors import UserError


class EngineError(UserError, ValueError):
    """A request the model cannot serve (prompt too long, no chat template...): the client's fault."""


class SamplingError(EngineError):
    """A sampling value outside what every engine accepts; `field` is its OpenAI name."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# The widest values both engines take: llama.cpp's top_k is a C int; torch seeds take int64 (and
# llama.cpp's 32-bit seed is folded from it, see LlamaCppEngine).
SEED_MAX = 2**63 - 1
TOP_K_MAX = 2**31 - 1
STOP_MAX = 4
REPETITION_PENALTY_MIN = 0.01
STOP_CHARS_MAX = 256


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.0
    stop: Sequence[str] = ()
    seed: Optional[int] = None
    # Polled between tokens; True ends generation early (request timeout, client gone).
    cancel: Optional[Callable[[], bool]] = None


def check_sampling(params: "SamplingParams", allow_zero_tokens: bool = False) -> None:
    """Refuse a value either engine would fail on, or read as something else, naming the field.

    top_k: 0 is "off" (the whole vocabulary); -1 is taken as "off" too (vLLM's spelling) and
    stored as 0. max_tokens: at least 1 (llama.cpp reads <= 0 as "up to the end of the context");
    0 only where the caller scores the prompt (completions with echo).
    """
    def bad(field, message):
        raise SamplingError(field, f"'{field}' {message}")

    def number(field, value, low, high):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            bad(field, f"must be a finite number, got {value!r}")
        if not low <= value <= high:
            bad(field, f"must be between {low} and {high}, got {value}")

    def integer(field, value, low, high):
        if isinstance(value, bool) or not isinstance(value, int):
            bad(field, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            bad(field, f"must be between {low} and {high}, got {value}")

    integer("max_tokens", params.max_tokens, 0 if allow_zero_tokens else 1, 2**31 - 1)
    number("temperature", params.temperature, 0.0, 2.0)
    number("top_p", params.top_p, 0.0, 1.0)
    integer("top_k", params.top_k, -1, TOP_K_MAX)
    if params.top_k == -1:
        params.top_k = 0
    # > 0, and not so near 0 that dividing the logits by it overflows them to inf (NaN probabilities).
    number("repetition_penalty", params.repeat_penalty, REPETITION_PENALTY_MIN, 10.0)
    if params.seed is not None:
        integer("seed", params.seed, 0, SEED_MAX)
    stop = params.stop
    if isinstance(stop, str) or not isinstance(stop, (list, tuple)) or len(stop) > STOP_MAX \
            or not all(isinstance(s, str) and 0 < len(s) <= STOP_CHARS_MAX for s in stop):
        bad("stop", f"must be a non-empty string or a list of at most {STOP_MAX} of them, each at most {STOP_CHARS_MAX} characters")


class Halt:
    """The per-token stop check an engine polls: the caller's cancel, or the engine's own stop
    (its consumer left). Remembers that it fired, so a cut answer reports "length", not "stop"."""

    def __init__(self, cancel: Optional[Callable[[], bool]] = None):
        self.cancel = cancel
        self.stopped = False  # set by the engine itself (a stream's reader went away)
        self.fired = False

    def __call__(self) -> bool:
        if self.stopped or (self.cancel is not None and self.cancel()):
            self.fired = True
        return self.fired


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length" (max_tokens, or cut by cancel)
    # OpenAI completions shape: tokens, token_logprobs, top_logprobs, text_offset (None unless asked)
    logprobs: Optional[dict] = None


@dataclass
class StreamPiece:
    text: str
    finish_reason: Optional[str] = None  # set on the last piece


@dataclass
class EngineInfo:
    name: str
    kind: str  # "llama.cpp" or "transformers"
    context_length: int
    chat_template: Optional[str]
    extra: dict = field(default_factory=dict)


class Engine(ABC):
    info: EngineInfo

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Prompt ids of plain text, as the model's tokenizer gives them: its BOS first where the
        tokenizer (the GGUF file, tokenizer_config.json) adds one; never an EOS."""

    @abstractmethod
    def chat_tokens(self, messages: Sequence[dict]) -> list[int]:
        """Prompt ids of a conversation, rendered by the model's chat template with the open assistant turn."""

    @abstractmethod
    def complete(self, prompt: list[int], params: SamplingParams, echo: bool = False, logprobs: Optional[int] = None) -> Completion:
        """Generate after `prompt`; with echo+logprobs, also the prompt tokens' log-probabilities."""

    @abstractmethod
    def stream(self, prompt: list[int], params: SamplingParams) -> Iterator[StreamPiece]:
        """Generate after `prompt`, yielding text as it becomes final; the last piece has finish_reason."""

    def check_prompt(self, prompt: list[int], max_tokens: int) -> None:
        n_ctx = self.info.context_length
        if len(prompt) >= n_ctx:
            raise EngineError(f"the prompt has {len(prompt)} tokens; the model's context is {n_ctx} tokens")
        if not prompt:
            raise EngineError("the prompt is empty")


def render_chat(template: Optional[str], messages: Sequence[dict], special: dict) -> str:
    """Render a conversation with a Jinja chat template in a sandbox, as transformers does."""
    if not template:
        raise EngineError("this model has no chat template (a base model): use /v1/completions")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):  # the helper HF templates call to refuse a conversation
        raise TemplateRefusal(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    with template_errors():
        return env.from_string(template).render(messages=list(messages), add_generation_prompt=True, **special)


class TemplateRefusal(Exception):
    """raise_exception() called by a chat template."""


@contextmanager
def template_errors():
    """A chat template that refuses the conversation or fails on it is the request's problem: EngineError."""
    from jinja2 import TemplateError

    try:
        yield
    except (TemplateRefusal, TemplateError, TypeError, KeyError, IndexError, ValueError) as e:
        if isinstance(e, EngineError):
            raise
        raise EngineError(f"the chat template refused these messages: {e}") from None


def load_engine(path: str, **options) -> Engine:
    """A GGUF file runs on llama.cpp; an HF directory or a megactllm checkpoint on transformers."""
    from pathlib import Path

    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        from megactllm.serve.llama_engine import LlamaCppEngine

        return LlamaCppEngine(p, **options)
    if p.is_dir():
        from megactllm.serve.hf_engine import TransformersEngine

        return TransformersEngine(p, **options)
    raise EngineError(f"{path} is neither a .gguf file nor a model directory (HF LLaMA or megactllm checkpoint)")
