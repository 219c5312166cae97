"""The server's outer ASGI layer: the API key, one log line per request, and a 500 for a bug.

The key is checked on the path the router matches (the ASGI scope's `path`, the request line's
target), never on a URL rebuilt from the Host header: `Host: x#` or `Host: x/y` bends such a URL
(older starlette gave `""` or `/y/v1/...` for it) while the route still matches. Every path but
the public ones needs the key, so a route added later is guarded without anyone remembering to.
"""
from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Optional

log = logging.getLogger("megactllm.serve")

PUBLIC_PATHS = frozenset({"/health"})


def error_body(message: str, kind: str, code: Optional[str] = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


async def _send_json(send, status: int, body: bytes, headers=()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams and hide disconnects)."""

    def __init__(self, app, api_key: Optional[str] = None):
        self.app = app
        self.expected = None if api_key is None else f"Bearer {api_key}".encode()

    def _authorized(self, scope) -> bool:
        if self.expected is None or scope.get("path") in PUBLIC_PATHS:
            return True
        given = b""
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                given = value
                break
        return secrets.compare_digest(given, self.expected)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not self._authorized(scope):
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.monotonic(), [0]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if not self._authorized(scope):
                await _send_json(send_and_note, 401, error_body("invalid or missing API key", "authentication_error", "invalid_api_key"),
                                 [(b"www-authenticate", b"Bearer")])
            else:
                await self.app(scope, receive, send_and_note)
        except Exception as err:  # a bug: say so, keep serving
            log.exception("internal error")
            if not status[0]:
                await _send_json(send_and_note, 500, error_body(f"internal error: {type(err).__name__}", "server_error"))
        prompt, completion = (scope.get("state") or {}).get("usage", (0, 0))
        log.info("%s %s %d prompt_tokens=%d completion_tokens=%d %.3fs", scope.get("method"), scope.get("path"),
                 status[0] or 499, prompt, completion, time.monotonic() - start)
