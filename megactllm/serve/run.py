"""Start the server on a socket bound here, so a caller learns the real port (port 0 = any free one)."""
from __future__ import annotations

import logging
import socket
import sys
from typing import Optional

from megactllm.serve.engine import Engine
from megactllm.serve.requests import Limits
from megactllm.serve.server import create_app


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 8000, limits: Optional[Limits] = None,
          api_key: Optional[str] = None, model_name: Optional[str] = None) -> None:
    """Serve until interrupted; prints `listening on http://HOST:PORT` once the socket is bound."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    sock = bind(host, port)
    app = create_app(engine, limits, api_key, model_name)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on http://{shown}:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
