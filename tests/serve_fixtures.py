"""An in-process server (uvicorn on a thread, real sockets) over the tiny transformers model, with
hooks into generation for the tests of the server's limits: a gate that holds generation at its
first token (work that is still running), a fault raised at a given token, and a token count.

Import into a test module with `from serve_fixtures import *`.
"""
import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from gguf_fixtures import *  # noqa: F401,F403
from gguf_fixtures import __all__ as _gguf_all

__all__ = [*_gguf_all, "hooked_engine", "serving", "raw_http", "post", "Hooks"]


class Hooks:
    """What the test does to generation: hold it at a gate, fail it, count its tokens."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.fail_at = None  # raise at this token (1-based)
        self.sleep_at = None  # (token, seconds): stall generation once
        self.tokens = []  # generated tokens of each generate() call

    def reset(self):
        self.__init__()


@pytest.fixture(scope="module")
def hooked_engine(tiny_hf_dir):
    from transformers import LogitsProcessor, LogitsProcessorList

    from megactllm.serve.hf_engine import TransformersEngine

    hooks = Hooks()

    class Hook(LogitsProcessor):
        def __init__(self):
            hooks.tokens.append(0)

        def __call__(self, input_ids, scores):
            hooks.tokens[-1] += 1
            step = hooks.tokens[-1]
            hooks.gate.wait(30)
            if hooks.fail_at == step:
                raise RuntimeError("a fault injected into generation")
            if hooks.sleep_at and hooks.sleep_at[0] == step:
                time.sleep(hooks.sleep_at[1])
            return scores

    class HookedEngine(TransformersEngine):
        def _generate_kwargs(self, prompt, params, halt):
            return dict(super()._generate_kwargs(prompt, params, halt), logits_processor=LogitsProcessorList([Hook()]))

    engine = HookedEngine(tiny_hf_dir, threads=1, name="tiny-zh")
    engine.hooks = hooks
    yield engine
    hooks.gate.set()


@contextlib.contextmanager
def serving(engine, api_key=None, **limits):
    """The app on a free port on a thread; yields its base URL."""
    import uvicorn

    from megactllm.serve.requests import Limits
    from megactllm.serve.run import bind
    from megactllm.serve.server import create_app

    sock = bind("127.0.0.1", 0)
    app = create_app(engine, Limits(**limits), api_key=api_key)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        getattr(engine, "hooks", Hooks()).gate.set()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def raw_http(base: str, request_line: str, headers: dict, body: bytes = b"", timeout: float = 30.0) -> tuple[int, bytes]:
    """One request written byte by byte on a socket (no client library to tidy the Host header)."""
    host, port = base.rsplit("/", 1)[-1].split(":")
    lines = [request_line] + [f"{k}: {v}" for k, v in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\nConnection: close\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


def post(base: str, path: str, body, key=None, timeout: float = 60.0) -> tuple[int, object]:
    """POST JSON; returns (status, parsed JSON) or, for an event stream, (status, [events])."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(base + path, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
                return status, [e if e == "[DONE]" else json.loads(e) for e in events]
            return status, json.loads(text)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
