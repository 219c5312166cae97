"""A multi-turn conversation with one engine: history, system prompt, streamed replies."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterator, Optional

from megactllm.serve.engine import Engine, EngineError, SamplingParams


@dataclass
class ChatSession:
    engine: Engine
    system: Optional[str] = None
    params: SamplingParams = field(default_factory=SamplingParams)
    messages: list = field(default_factory=list)

    def __post_init__(self):
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def send(self, text: str) -> Iterator[str]:
        """Stream the reply to `text`; the turn enters the history only once the reply is complete.

        When the history outgrows the context, the oldest exchanges are dropped (the system
        prompt stays); a single message too long for the context is an EngineError.
        """
        turn, prompt = self._fit(self.messages + [{"role": "user", "content": text}])
        reply, params = [], copy.copy(self.params)
        params.max_tokens = min(params.max_tokens, self.engine.info.context_length - len(prompt))
        for piece in self.engine.stream(prompt, params):
            reply.append(piece.text)
            yield piece.text
        self.messages = turn + [{"role": "assistant", "content": "".join(reply)}]

    def _fit(self, turn: list) -> tuple[list, list[int]]:
        """The conversation less its oldest exchanges until it fits, and its prompt ids."""
        keep = 1 if self.system else 0
        while True:
            prompt = self.engine.chat_tokens(turn)
            if len(prompt) + 16 <= self.engine.info.context_length:
                return turn, prompt
            if len(turn) - keep <= 1:
                raise EngineError(f"the message is {len(prompt)} tokens; the context holds {self.engine.info.context_length}")
            turn = turn[:keep] + turn[keep + 2:]  # drop the oldest user/assistant exchange
