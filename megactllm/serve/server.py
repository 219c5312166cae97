"""OpenAI-compatible HTTP API over one Engine (FastAPI + uvicorn).

The engine runs one request at a time on one worker thread; at most `max_queue` more wait, and
beyond that a request is refused at once with 503. A slot is held until the engine has really
finished the work, not until its client stopped waiting: a request that times out (504) or whose
client leaves sets a stop flag that the engine polls per token, and its slot frees when the engine
gets there. Bodies are read up to a size limit and checked field by field
(megactllm.serve.requests): every bad request is a 4xx in OpenAI's error shape. The API key is
checked by megactllm.serve.guard on every route but /health.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional

from megactllm.serve.extras import require

require("the OpenAI-compatible server", "fastapi", "uvicorn")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402

from megactllm.serve.engine import Engine, EngineError, SamplingParams  # noqa: E402
from megactllm.serve.guard import Guard  # noqa: E402
from megactllm.serve.openapi import chat_body_schema, completion_body_schema  # noqa: E402
from megactllm.serve.requests import (  # noqa: E402
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
_POLL_S = 0.1  # how often a waiting request looks for its deadline and its client


class Scheduler:
    """One engine call at a time; a bounded number admitted (running or waiting)."""

    def __init__(self, max_queue: int):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.capacity = max_queue + 1
        self.admitted = 0
        self.lock = threading.Lock()

    def submit(self, fn: Callable) -> Future:
        """Run fn on the engine thread, or 503 when full; its slot frees when fn has returned."""
        with self.lock:
            if self.admitted >= self.capacity:
                raise RequestError(503, "the server is busy (queue full); retry later", kind="server_busy", code="queue_full")
            self.admitted += 1
        try:
            future = self.executor.submit(fn)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        return future

    def _release(self) -> None:
        with self.lock:
            self.admitted -= 1


class Job:
    """A request's stop flag and deadline, polled by the engine between tokens."""

    def __init__(self, timeout_s: float):
        self.deadline = time.monotonic() + timeout_s
        self.stop = threading.Event()

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def cancelled(self) -> bool:
        return self.stop.is_set() or self.expired()


class _EngineStream(StreamingResponse):
    """Sets the job's stop flag however the response ends (done, client gone, never started)."""

    def __init__(self, content, job: Job):
        super().__init__(content, media_type="text/event-stream")
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.stop.set()


def _error_response(err: RequestError):
    return JSONResponse(err.body(), status_code=err.status)


def _timeout(limits: Limits) -> RequestError:
    return RequestError(504, f"the request took longer than {limits.timeout_s:g}s", kind="timeout", code="timeout")


def create_app(engine: Engine, limits: Optional[Limits] = None, api_key: Optional[str] = None, model_name: Optional[str] = None):
    limits = limits or Limits()
    model_name = model_name or engine.info.name
    scheduler = Scheduler(limits.max_queue)
    # The OpenAPI schema (at /openapi.json, behind the key like every route) describes the request
    # bodies checked in megactllm.serve.requests; the API fuzzer in the tests reads it.
    app = FastAPI(title="megactllm", docs_url=None, redoc_url=None)
    app.add_middleware(Guard, api_key=api_key)
    max_prompt = min(limits.max_prompt_tokens or engine.info.context_length, engine.info.context_length)

    async def read_body(request: Request) -> dict:
        request.state.usage = (0, 0)
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

    def check_prompt(ids: list[int], params: SamplingParams, field: str) -> None:
        if not ids:
            raise RequestError(400, f"'{field}' is empty (no tokens)", field)
        if len(ids) > max_prompt or len(ids) >= engine.info.context_length:
            raise RequestError(400, f"the prompt is {len(ids)} tokens; the model's context is {engine.info.context_length} "
                               f"and this server accepts prompts of at most {min(max_prompt, engine.info.context_length - 1)}",
                               field, code="context_length_exceeded")
        room = engine.info.context_length - len(ids)
        params.max_tokens = min(params.max_tokens, room)

    async def run(request: Request, fn: Callable, job: Job):
        """fn() on the engine thread (503 when the queue is full); 504 past the deadline. Past the
        deadline or once the client has gone, the job's stop flag ends the engine's work."""

        def guarded():
            if job.cancelled():  # waited past its time in the queue: do nothing
                return None
            return fn()

        future = asyncio.wrap_future(scheduler.submit(guarded))
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # read, so asyncio does not warn
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=min(_POLL_S, max(job.deadline - time.monotonic(), 0.001)))
                if done:
                    break
                if job.expired():
                    raise _timeout(limits)
                if await request.is_disconnected():
                    raise RequestError(499, "the client closed the connection", kind="client_closed")
            out = future.result()
        except EngineError as e:
            raise RequestError(400, str(e)) from None
        finally:
            job.stop.set()
        if out is None:
            raise _timeout(limits)
        return out

    def stream_events(make_pieces: Callable, chunk_of: Callable, job: Job):
        """SSE over pieces made on the engine thread. Any end of the response (done, client gone)
        stops the generation; an error in it ends the stream with an error event."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is closed: nobody reads any more
                job.stop.set()

        def produce():
            try:
                if job.cancelled():
                    put(_timeout(limits) if job.expired() else done)
                    return
                for piece in make_pieces():
                    put(piece)
            except Exception as e:  # reported to the client as an SSE error event
                put(e)
            finally:
                put(done)

        scheduler.submit(produce)  # before the response starts, so a full queue is still a plain 503

        async def events():
            try:
                while True:
                    item = await queue.get()
                    if item is done:
                        break
                    if isinstance(item, Exception):
                        yield f"data: {json.dumps(_stream_error(item).body(), ensure_ascii=False)}\n\n"
                        break
                    yield f"data: {json.dumps(chunk_of(item), ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                job.stop.set()

        return _EngineStream(events(), job)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "engine": engine.info.kind, "busy": scheduler.admitted}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "megactllm",
                                            "context_length": engine.info.context_length}]}

    @app.post("/v1/chat/completions", openapi_extra=chat_body_schema(model_name, limits))
    async def chat(request: Request):
        job = Job(limits.timeout_s)
        body = await read_body(request)
        params = sampling_params(body, limits, default_max_tokens=min(512, limits.max_tokens_cap))
        messages = chat_messages(body)
        stream = flag(body, "stream")
        try:
            ids = engine.chat_tokens(messages)
        except (EngineError, ValueError) as e:
            raise RequestError(400, str(e), "messages") from None
        check_prompt(ids, params, "messages")
        params.cancel = job.cancelled
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

            return stream_events(lambda: engine.stream(ids, params), chunk_of, job)

        out = await run(request, lambda: engine.complete(ids, params), job)
        request.state.usage = (out.prompt_tokens, out.completion_tokens)
        return {"id": cid, "object": "chat.completion", "created": created, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text}, "finish_reason": out.finish_reason}],
                "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                          "total_tokens": out.prompt_tokens + out.completion_tokens}}

    @app.post("/v1/completions", openapi_extra=completion_body_schema(model_name, limits))
    async def completions(request: Request):
        job = Job(limits.timeout_s)
        body = await read_body(request)
        echo, logprobs, stream = flag(body, "echo"), logprobs_request(body), flag(body, "stream")
        # max_tokens 0 scores the prompt without generating (echo + logprobs, as lm-eval asks).
        params = sampling_params(body, limits, default_max_tokens=16, allow_zero_tokens=echo and not stream)
        prompt = completion_prompt(body)
        ids = engine.tokenize(prompt)
        check_prompt(ids, params, "prompt")
        params.cancel = job.cancelled
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if stream:
            if echo or logprobs is not None:
                raise RequestError(400, "echo and logprobs are not supported with stream=true", "stream")
            request.state.usage = (len(ids), 0)

            def chunk_of(piece):
                return {"id": cid, "object": "text_completion", "created": created, "model": model_name,
                        "choices": [{"index": 0, "text": piece.text, "logprobs": None, "finish_reason": piece.finish_reason}]}

            return stream_events(lambda: engine.stream(ids, params), chunk_of, job)

        out = await run(request, lambda: engine.complete(ids, params, echo=echo, logprobs=logprobs), job)
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
        return _error_response(RequestError(404, f"no route {request.method} {request.scope['path']}"))

    @app.exception_handler(405)
    async def not_allowed(request, exc):
        return _error_response(RequestError(405, f"{request.method} is not allowed on {request.scope['path']}"))

    return app


def _stream_error(err: Exception) -> RequestError:
    """The SSE error event for an error raised while generating."""
    if isinstance(err, RequestError):
        return err
    if isinstance(err, EngineError):
        return RequestError(400, str(err))
    if isinstance(err, TimeoutError):
        return RequestError(504, str(err), kind="timeout", code="timeout")
    log.error("internal error while streaming", exc_info=err)
    return RequestError(500, f"internal error: {type(err).__name__}", kind="server_error")
