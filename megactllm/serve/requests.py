"""OpenAI request bodies checked at the edge: every wrong field is a 400 naming it, never a 500."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from megactllm.errors import UserError
from megactllm.serve.engine import SamplingError, SamplingParams, check_sampling


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


def sampling_params(body: dict, limits: Limits, default_max_tokens: int, allow_zero_tokens: bool = False) -> SamplingParams:
    """The request's sampling fields, each checked by type here and by range in check_sampling
    (the ranges both engines accept), so a value an engine would fail on is a 400 naming it."""
    max_tokens = _field(body, "max_tokens", (int,), None)
    name = "max_tokens"
    if max_tokens is None:
        name = "max_completion_tokens"
        max_tokens = _field(body, name, (int,), default_max_tokens)
    if max_tokens > limits.max_tokens_cap:
        raise RequestError(400, f"'{name}' {max_tokens} is over this server's cap of {limits.max_tokens_cap}", name)
    stop = _field(body, "stop", (str, list), [])
    n = _field(body, "n", (int,), 1)
    if n != 1:
        raise RequestError(400, f"only n=1 is supported, got {n}", "n")
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=_field(body, "temperature", (int, float), 1.0),
        top_p=_field(body, "top_p", (int, float), 1.0),
        top_k=_field(body, "top_k", (int,), 0),
        repeat_penalty=_field(body, "repetition_penalty", (int, float), 1.0),
        stop=[stop] if isinstance(stop, str) else stop,
        seed=_field(body, "seed", (int,), None),
    )
    try:
        check_sampling(params, allow_zero_tokens=allow_zero_tokens)
    except SamplingError as e:
        field = name if e.field == "max_tokens" else e.field
        message = str(e).replace("'max_tokens'", f"'{field}'")
        if e.field == "max_tokens" and max_tokens == 0 and not allow_zero_tokens:
            message += " (0 is taken only by /v1/completions with echo=true, to score the prompt)"
        raise RequestError(400, message, field) from None
    params.temperature, params.top_p, params.repeat_penalty = float(params.temperature), float(params.top_p), float(params.repeat_penalty)
    return params


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
