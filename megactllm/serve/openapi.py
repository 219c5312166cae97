"""JSON schemas of the request bodies, for the app's OpenAPI document.

They say what megactllm.serve.requests accepts (the checks there are the authority; these are
their description for clients and for the API fuzzer in the tests).
"""
from __future__ import annotations

from megactllm.serve.engine import REPETITION_PENALTY_MIN, SEED_MAX, STOP_CHARS_MAX, STOP_MAX, TOP_K_MAX


def _sampling(limits) -> dict:
    stop_string = {"type": "string", "minLength": 1, "maxLength": STOP_CHARS_MAX}
    return {
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": limits.max_tokens_cap},
        "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": limits.max_tokens_cap},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": -1, "maximum": TOP_K_MAX, "description": "0 or -1: off"},
        "repetition_penalty": {"type": "number", "minimum": REPETITION_PENALTY_MIN, "maximum": 10},
        "seed": {"type": "integer", "minimum": 0, "maximum": SEED_MAX},
        "stop": {"anyOf": [stop_string, {"type": "array", "items": stop_string, "maxItems": STOP_MAX}]},
        "n": {"type": "integer", "minimum": 1, "maximum": 1},
        "stream": {"type": "boolean"},
    }


def _body(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def chat_body_schema(model_name: str, limits) -> dict:
    message = {"type": "object", "required": ["role", "content"],
               "properties": {"role": {"type": "string", "enum": ["system", "user", "assistant"]}, "content": {"type": "string"}}}
    return _body({"type": "object", "required": ["messages"],
                  "properties": {"model": {"type": "string", "enum": [model_name]},
                                 "messages": {"type": "array", "minItems": 1, "items": message}, **_sampling(limits)}})


def completion_body_schema(model_name: str, limits) -> dict:
    return _body({"type": "object", "required": ["prompt"],
                  "properties": {"model": {"type": "string", "enum": [model_name]},
                                 "prompt": {"anyOf": [{"type": "string", "minLength": 1},
                                                      {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1}]},
                                 "echo": {"type": "boolean"}, "logprobs": {"type": "integer", "minimum": 0, "maximum": 5},
                                 **_sampling(limits)}})
