"""The one small interface every inference engine answers, whatever runs the model underneath.

An engine tokenizes plain text exactly as training did, renders a chat with the model's own chat
template, and generates with the engine's own sampler and KV cache (llama.cpp's, transformers').
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

from megactllm.errors import UserError


class EngineError(UserError, ValueError):
    """A request the model cannot serve (prompt too long, no chat template...): the client's fault."""


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


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
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

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=list(messages), add_generation_prompt=True, **special)


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
