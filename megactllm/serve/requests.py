"""OpenAI request bodies checked at the edge: every wrong field is a 400 naming it, never a 500."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from megactllm.errors import UserError
from megactllm.serve.engine import SamplingParams


class RequestError(UserError):
    """A bad request, answered in OpenAI's error shape with `status`."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, kind: str = "invalid_request_error",
                 code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 0  # 0: the model's context
    max_tokens_cap: int = 1024
    max_queue: int = 8  # requests waiting behind the running one; more get 503
    timeout_s: float = 120.0


def parse_json(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"the request body is not valid UTF-8 (byte {e.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return body


def _field(body: dict, name: str, types: tuple, default: Any = None, required: bool = False):
    if name not in body or body[name] is None:
        if required:
            raise RequestError(400, f"'{name}' is required", name)
        return default
    value = body[name]
    # bool is an int in Python; a JSON true is never a valid number here.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = "/".join(t.__name__ for t in types)
        raise RequestError(400, f"'{name}' must be {names}, got {type(value).__name__}", name)
    return value


def _number(body, name, default, low, high):
    value = _field(body, name, (int, float), default)
    if not (low <= value <= high):
        raise RequestError(400, f"'{name}' must be between {low} and {high}, got {value}", name)
    return float(value)


def sampling_params(body: dict, limits: Limits, default_max_tokens: int) -> SamplingParams:
    max_tokens = _field(body, "max_tokens", (int,), None)
    if max_tokens is None:
        max_tokens = _field(body, "max_completion_tokens", (int,), default_max_tokens)
    if max_tokens < 0:
        raise RequestError(400, f"'max_tokens' must be >= 0, got {max_tokens}", "max_tokens")
    if max_tokens > limits.max_tokens_cap:
        raise RequestError(400, f"'max_tokens' {max_tokens} is over this server's cap of {limits.max_tokens_cap}", "max_tokens")
    stop = _field(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(400, "'stop' must be a non-empty string or a list of at most 4 of them", "stop")
    n = _field(body, "n", (int,), 1)
    if n != 1:
        raise RequestError(400, "only n=1 is supported", "n")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        top_k=int(_field(body, "top_k", (int,), 0)),
        repeat_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 10.0),
        stop=stop,
        seed=_field(body, "seed", (int,), None),
    )


def chat_messages(body: dict) -> list[dict]:
    messages = _field(body, "messages", (list,), required=True)
    if not messages:
        raise RequestError(400, "'messages' must not be empty", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(400, f"messages[{i}] must be an object with a string 'role'", "messages")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}] parts
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise RequestError(400, f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise RequestError(400, f"messages[{i}].content must be a string", "messages")
        if m["role"] not in ("system", "user", "assistant"):
            raise RequestError(400, f"messages[{i}].role {m['role']!r} is not system, user or assistant", "messages")
        out.append({"role": m["role"], "content": content})
    return out


def completion_prompt(body: dict) -> str:
    prompt = _field(body, "prompt", (str, list), required=True)
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise RequestError(400, "'prompt' must be a string (or a list of exactly one string)", "prompt")
        prompt = prompt[0]
    return prompt


def logprobs_request(body: dict) -> Optional[int]:
    value = _field(body, "logprobs", (int,), None)
    if value is not None and not 0 <= value <= 5:
        raise RequestError(400, "'logprobs' must be between 0 and 5", "logprobs")
    return value


def flag(body: dict, name: str) -> bool:
    return bool(_field(body, name, (bool,), False))
