"""OpenAI-compatible HTTP API over one Engine (FastAPI + uvicorn).

The engine runs one request at a time on one worker thread; at most `max_queue` more wait, and
beyond that a request is refused at once with 503. Bodies are read up to a size limit and checked
field by field (megactllm.serve.requests): every bad request is a 4xx in OpenAI's error shape.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from megactllm.serve.engine import Engine, EngineError, SamplingParams
from megactllm.serve.requests import (
    Limits,
    RequestError,
    chat_messages,
    completion_prompt,
    flag,
    logprobs_request,
    parse_json,
    sampling_params,
)

log = logging.getLogger("megactllm.serve")
_DRAIN_BYTES = 64 * 2**20


class Scheduler:
    """One engine call at a time; a bounded number waiting; a deadline per request."""

    def __init__(self, max_queue: int):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.capacity = max_queue + 1
        self.admitted = 0
        self.lock = threading.Lock()

    def admit(self) -> None:
        with self.lock:
            if self.admitted >= self.capacity:
                raise RequestError(503, "the server is busy (queue full); retry later", kind="server_busy", code="queue_full")
            self.admitted += 1

    def release(self) -> None:
        with self.lock:
            self.admitted -= 1


def _error_response(err: RequestError):
    return JSONResponse(err.body(), status_code=err.status)


def create_app(engine: Engine, limits: Optional[Limits] = None, api_key: Optional[str] = None, model_name: Optional[str] = None):
    limits = limits or Limits()
    model_name = model_name or engine.info.name
    scheduler = Scheduler(limits.max_queue)
    app = FastAPI(title="megactllm", docs_url=None, redoc_url=None, openapi_url=None)
    max_prompt = min(limits.max_prompt_tokens or engine.info.context_length, engine.info.context_length)

    @app.middleware("http")
    async def log_and_guard(request: Request, call_next):
        start = time.monotonic()
        request.state.usage = (0, 0)
        try:
            if request.url.path.startswith("/v1/"):
                if api_key is not None:
                    given = request.headers.get("authorization", "")
                    if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                        raise RequestError(401, "invalid or missing API key", kind="authentication_error", code="invalid_api_key")
            response = await call_next(request)
        except RequestError as err:
            response = _error_response(err)
        except Exception as err:  # a bug: say so, keep serving
            log.exception("internal error")
            response = JSONResponse({"error": {"message": f"internal error: {type(err).__name__}", "type": "server_error",
                                               "param": None, "code": None}}, status_code=500)
        prompt, completion = request.state.usage
        log.info("%s %s %d prompt_tokens=%d completion_tokens=%d %.3fs", request.method, request.url.path,
                 response.status_code, prompt, completion, time.monotonic() - start)
        return response

    async def read_body(request: Request) -> dict:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limits.max_body_bytes:
                chunks.append(chunk)
            elif size > _DRAIN_BYTES:
                break  # a client this far over the limit gets its answer without being read further
        if size > limits.max_body_bytes:
            # Read (and dropped) up to _DRAIN_BYTES first, so an ordinary client that is still
            # sending sees this answer instead of a reset connection.
            raise RequestError(413, f"the request body is over the limit of {limits.max_body_bytes} bytes")
        body = parse_json(b"".join(chunks))
        model = body.get("model")
        if model is not None and model != model_name:
            raise RequestError(404, f"the model {model!r} does not exist; this server serves {model_name!r}", "model",
                               code="model_not_found")
        return body

    def check_prompt(ids: list[int], params: SamplingParams) -> None:
        if len(ids) > max_prompt or len(ids) >= engine.info.context_length:
            raise RequestError(400, f"the prompt is {len(ids)} tokens; the model's context is {engine.info.context_length} "
                               f"and this server accepts prompts of at most {min(max_prompt, engine.info.context_length - 1)}",
                               "messages", code="context_length_exceeded")
        room = engine.info.context_length - len(ids)
        params.max_tokens = min(params.max_tokens, room)

    async def run(fn, deadline: float):
        """fn() on the engine thread, refused with 503 when the queue is full, 504 past the deadline."""
        scheduler.admit()
        try:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(scheduler.executor, fn)
            try:
                return await asyncio.wait_for(asyncio.shield(future), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                raise RequestError(504, f"the request took longer than {limits.timeout_s:.0f}s", kind="timeout") from None
            except EngineError as e:
                raise RequestError(400, str(e)) from None
        finally:
            scheduler.release()

    def stream_events(request, make_pieces, chunk_of, deadline: float):
        """SSE over pieces produced on the engine thread; generation stops when the client leaves."""
        scheduler.admit()  # before the response starts, so a full queue is still a plain 503
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        gone = threading.Event()
        done = object()
        released = []

        def release_once():
            if not released:
                released.append(True)
                scheduler.release()

        def produce():
            try:
                for piece in make_pieces(lambda: gone.is_set() or time.monotonic() > deadline):
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
            except Exception as e:  # reported to the client as an SSE error event
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        async def events():
            try:
                scheduler.executor.submit(produce)
                while True:
                    item = await queue.get()
                    if item is done:
                        break
                    if isinstance(item, Exception):
                        err = RequestError(400, str(item)) if isinstance(item, EngineError) else RequestError(500, "internal error", kind="server_error")
                        yield f"data: {json.dumps(err.body(), ensure_ascii=False)}\n\n"
                        break
                    yield f"data: {json.dumps(chunk_of(item), ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                gone.set()
                release_once()

        # The background task also frees the slot where a client left before the stream started.
        return StreamingResponse(events(), media_type="text/event-stream", background=BackgroundTask(release_once))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "engine": engine.info.kind, "busy": scheduler.admitted}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "megactllm",
                                            "context_length": engine.info.context_length}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read_body(request)
        params = sampling_params(body, limits, default_max_tokens=min(512, limits.max_tokens_cap))
        messages = chat_messages(body)
        stream = flag(body, "stream")
        deadline = time.monotonic() + limits.timeout_s
        try:
            ids = engine.chat_tokens(messages)
        except (EngineError, ValueError) as e:
            raise RequestError(400, str(e), "messages") from None
        check_prompt(ids, params)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if stream:
            request.state.usage = (len(ids), 0)
            first = [True]

            def chunk_of(piece):
                delta = {"content": piece.text}
                if first[0]:
                    delta["role"], first[0] = "assistant", False
                return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": piece.finish_reason}]}

            def pieces(cancel):
                params.cancel = cancel
                return engine.stream(ids, params)

            return stream_events(request, pieces, chunk_of, deadline)

        def call():
            params.cancel = lambda: time.monotonic() > deadline
            return engine.complete(ids, params)

        out = await run(call, deadline)
        request.state.usage = (out.prompt_tokens, out.completion_tokens)
        return {"id": cid, "object": "chat.completion", "created": created, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text}, "finish_reason": out.finish_reason}],
                "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                          "total_tokens": out.prompt_tokens + out.completion_tokens}}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request)
        params = sampling_params(body, limits, default_max_tokens=16)
        prompt = completion_prompt(body)
        echo, logprobs, stream = flag(body, "echo"), logprobs_request(body), flag(body, "stream")
        deadline = time.monotonic() + limits.timeout_s
        ids = engine.tokenize(prompt)
        check_prompt(ids, params)
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if stream:
            if echo or logprobs is not None:
                raise RequestError(400, "echo and logprobs are not supported with stream=true", "stream")
            request.state.usage = (len(ids), 0)

            def chunk_of(piece):
                return {"id": cid, "object": "text_completion", "created": created, "model": model_name,
                        "choices": [{"index": 0, "text": piece.text, "logprobs": None, "finish_reason": piece.finish_reason}]}

            def pieces(cancel):
                params.cancel = cancel
                return engine.stream(ids, params)

            return stream_events(request, pieces, chunk_of, deadline)

        def call():
            params.cancel = lambda: time.monotonic() > deadline
            return engine.complete(ids, params, echo=echo, logprobs=logprobs)

        out = await run(call, deadline)
        request.state.usage = (out.prompt_tokens, out.completion_tokens)
        return {"id": cid, "object": "text_completion", "created": created, "model": model_name,
                "choices": [{"index": 0, "text": out.text, "logprobs": out.logprobs, "finish_reason": out.finish_reason}],
                "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                          "total_tokens": out.prompt_tokens + out.completion_tokens}}

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return _error_response(exc)

    @app.exception_handler(404)
    async def not_found(request, exc):
        return _error_response(RequestError(404, f"no route {request.method} {request.url.path}"))

    @app.exception_handler(405)
    async def not_allowed(request, exc):
        return _error_response(RequestError(405, f"{request.method} is not allowed on {request.url.path}"))

    return app
