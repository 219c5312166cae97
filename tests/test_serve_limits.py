"""How the server is limited, on the tiny transformers model behind a real socket: the API key on
every route whatever the Host header says, sampling values checked at the edge, a queue that
counts work still running, time-limited streams that say they were cut, errors in generation
that end a stream and free the engine, chat templates that refuse."""
import json
import threading
import time
import urllib.request

import pytest
from serve_fixtures import *  # noqa: F401,F403

KEY = "k-123"
CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "你好"}]


@pytest.fixture
def engine(hooked_engine):
    hooked_engine.hooks.reset()
    yield hooked_engine
    hooked_engine.hooks.gate.set()


def _health(base):
    return json.load(urllib.request.urlopen(base + "/health", timeout=10))


def _wait_idle(base, timeout=30.0):
    end = time.monotonic() + timeout
    while _health(base)["busy"] and time.monotonic() < end:
        time.sleep(0.05)
    return _health(base)["busy"] == 0


def test_api_key_on_every_route_whatever_the_host_header(engine):
    body = json.dumps({"messages": HELLO, "max_tokens": 2}).encode()
    stream_body = json.dumps({"messages": HELLO, "max_tokens": 2, "stream": True}).encode()
    requests = [("GET /v1/models", b""), (f"POST {CHAT}", body), (f"POST {CHAT}", stream_body),
                ("POST /v1/completions", json.dumps({"prompt": "你好", "max_tokens": 2}).encode()),
                ("GET /openapi.json", b""), ("GET /v1/nothing", b""), ("GET //v1/models", b"")]
    with serving(engine, api_key=KEY) as base:
        for host in ["x#", "x/y", "x?", "127.0.0.1", "x/y#z", "[::1"]:
            for line, data in requests:
                headers = {"Host": host, "Content-Type": "application/json"}
                status, payload = raw_http(base, f"{line} HTTP/1.1", headers, data)
                assert status in (400, 401), f"{line} with Host: {host} -> {status} {payload[:200]}"
                if status == 400:  # the HTTP parser refused the Host itself: nothing was served either
                    assert b"choices" not in payload and b'"data"' not in payload
            status, _ = raw_http(base, "GET /v1/models HTTP/1.1", {"Host": host, "Authorization": "Bearer wrong"})
            assert status in (400, 401)
        status, payload = raw_http(base, "GET /v1/models HTTP/1.1", {"Host": "x#", "Authorization": f"Bearer {KEY}"})
        assert status == 200 and b"tiny-zh" in payload
        status, payload = raw_http(base, "GET /health HTTP/1.1", {"Host": "x#"})
        assert status == 200 and b'"ok"' in payload
        status, events = post(base, CHAT, {"messages": HELLO, "max_tokens": 2, "stream": True}, key=KEY)
        assert status == 200 and events[-1] == "[DONE]"


@pytest.mark.parametrize("field,value", [
    ("repetition_penalty", 0), ("repetition_penalty", -1.0), ("repetition_penalty", 11), ("repetition_penalty", 1e-300),
    ("top_k", -2), ("top_k", 2**40), ("top_k", 1.5),
    ("seed", 2**70), ("seed", -1), ("seed", 1.0),
    ("temperature", -0.1), ("temperature", 2.5), ("temperature", "NaN"), ("temperature", "Infinity"),
    ("top_p", 1.5), ("top_p", -0.1),
    ("max_tokens", 0), ("max_tokens", -1), ("max_completion_tokens", 0),
    ("n", 2), ("n", 0), ("stop", ["a", "b", "c", "d", "e"]), ("stop", ""), ("stop", ["x" * 300]), ("stop", [3]),
])
def test_every_sampling_field_is_checked_at_the_edge(engine, field, value):
    with serving(engine, timeout_s=30) as base:
        for stream in (False, True):
            body = {"messages": HELLO, "max_tokens": 4, field: value, "stream": stream}
            if field == "max_completion_tokens":
                body.pop("max_tokens")
            data = json.dumps(body).encode()
            if value in ("NaN", "Infinity"):  # JSON literals Python's parser accepts
                data = data.replace(f'"{value}"'.encode(), value.encode())
            status, reply = post(base, CHAT, data)
            assert status == 400, (field, value, stream, reply)
            assert reply["error"]["param"] == field and field in reply["error"]["message"], reply
        assert not engine.hooks.tokens, "nothing reached the engine"
        status, reply = post(base, CHAT, {"messages": HELLO, "max_tokens": 2, "top_k": -1, "seed": 2**63 - 1,
                                          "repetition_penalty": 0.5, "temperature": 1e-300})
        assert status == 200 and reply["usage"]["completion_tokens"] >= 1, reply


def test_max_tokens_zero_only_scores_a_prompt(engine):
    with serving(engine) as base:
        status, reply = post(base, "/v1/completions", {"prompt": "你好", "max_tokens": 0, "stream": True})
        assert status == 400 and reply["error"]["param"] == "max_tokens"
        status, reply = post(base, "/v1/completions", {"prompt": "你好", "max_tokens": 0})
        assert status == 400 and "echo" in reply["error"]["message"]
        status, reply = post(base, "/v1/completions", {"prompt": "你好", "max_tokens": 0, "echo": True, "logprobs": 1})
        assert status == 200 and reply["usage"]["completion_tokens"] == 0


def test_queue_counts_work_that_still_runs(engine):
    """Six requests into a queue of one: the first times out (504) while its work still runs at
    the gate; every later one is refused (503) until that work has really ended."""
    engine.hooks.gate.clear()
    with serving(engine, max_queue=0, timeout_s=0.5) as base:
        statuses = []
        for i in range(6):
            status, reply = post(base, CHAT, {"messages": HELLO, "max_tokens": 64, "temperature": 0})
            statuses.append(status)
        assert statuses == [504] + [503] * 5, statuses
        assert _health(base)["busy"] == 1
        engine.hooks.gate.set()
        assert _wait_idle(base)
        assert engine.hooks.tokens == [1], "the timed-out request stopped at its next token"
        status, reply = post(base, CHAT, {"messages": HELLO, "max_tokens": 3, "temperature": 0})
        assert status == 200 and reply["usage"]["completion_tokens"] == 3


def test_concurrent_requests_into_a_queue_of_one(engine):
    engine.hooks.gate.clear()
    with serving(engine, max_queue=0, timeout_s=1.0) as base:
        statuses = []
        threads = [threading.Thread(target=lambda: statuses.append(post(base, CHAT, {"messages": HELLO, "max_tokens": 8})[0]))
                   for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(statuses) == [503] * 5 + [504], statuses
        engine.hooks.gate.set()
        assert _wait_idle(base) and len(engine.hooks.tokens) == 1


def test_a_client_that_leaves_stops_its_work(engine):
    engine.hooks.gate.clear()
    with serving(engine, max_queue=0, timeout_s=60) as base:
        import socket

        host, port = base.rsplit(":", 1)
        data = json.dumps({"messages": HELLO, "max_tokens": 64, "temperature": 0}).encode()
        s = socket.create_connection(("127.0.0.1", int(port)))
        s.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        for _ in range(100):
            if engine.hooks.tokens:
                break
            time.sleep(0.05)
        s.close()  # gone while its generation waits at the gate
        time.sleep(0.5)
        assert post(base, CHAT, {"messages": HELLO, "max_tokens": 2})[0] == 503, "its work still runs: the slot is held"
        engine.hooks.gate.set()
        assert _wait_idle(base)
        assert engine.hooks.tokens == [1], "generation stopped at the first token after the client left"


def test_stream_cut_by_the_time_limit_says_length(engine):
    engine.hooks.gate.clear()
    threading.Timer(1.0, engine.hooks.gate.set).start()
    with serving(engine, timeout_s=0.5) as base:
        status, events = post(base, CHAT, {"messages": HELLO, "max_tokens": 64, "temperature": 0, "stream": True})
        assert status == 200 and events[-1] == "[DONE]"
        assert events[-2]["choices"][0]["finish_reason"] == "length", events
        assert engine.hooks.tokens == [1]
        status, reply = post(base, "/v1/completions", {"prompt": "北京", "max_tokens": 3, "temperature": 0, "stream": True})
        assert status == 200 and reply[-2]["choices"][0]["finish_reason"] == "length"  # max_tokens reached


def test_an_error_inside_generation_ends_the_stream_and_frees_the_engine(engine):
    with serving(engine, max_queue=0, timeout_s=30) as base:
        engine.hooks.fail_at = 3
        status, events = post(base, CHAT, {"messages": HELLO, "max_tokens": 16, "temperature": 0, "stream": True})
        assert status == 200 and events[-1] == "[DONE]" and events[-2]["error"]["type"] == "server_error", events
        status, reply = post(base, CHAT, {"messages": HELLO, "max_tokens": 16, "temperature": 0})
        assert status == 500 and reply["error"]["type"] == "server_error"
        assert _wait_idle(base)
        engine.hooks.fail_at = None
        assert post(base, CHAT, {"messages": HELLO, "max_tokens": 2})[0] == 200


def test_a_stalled_generation_times_out_the_stream(engine):
    engine.token_timeout_s = 0.3
    try:
        with serving(engine, max_queue=0, timeout_s=30) as base:
            engine.hooks.sleep_at = (2, 1.5)
            start = time.monotonic()
            status, events = post(base, CHAT, {"messages": HELLO, "max_tokens": 16, "temperature": 0, "stream": True})
            assert status == 200 and events[-2]["error"]["type"] == "timeout", events
            assert time.monotonic() - start < 5
            assert _wait_idle(base) and engine.hooks.tokens == [2], "stopped right after the stalled token"
            engine.hooks.sleep_at = None
            assert post(base, CHAT, {"messages": HELLO, "max_tokens": 2})[0] == 200
    finally:
        engine.token_timeout_s = 60.0


def test_a_chat_template_that_raises_is_a_400(engine):
    template = engine.tokenizer.chat_template
    engine.tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                                      "{{ raise_exception('no system messages here') }}{% endif %}{{ m['content'] }}{% endfor %}")
    try:
        with serving(engine) as base:
            status, reply = post(base, CHAT, {"messages": [{"role": "system", "content": "x"}] + HELLO, "max_tokens": 2})
            assert status == 400 and "no system messages here" in reply["error"]["message"], reply
            engine.tokenizer.chat_template = "{% for m in messages %}{{ m.content | nosuchfilter }}{% endfor %}"
            status, reply = post(base, CHAT, {"messages": HELLO, "max_tokens": 2})
            assert status == 400 and reply["error"]["param"] == "messages", reply
    finally:
        engine.tokenizer.chat_template = template


def test_llama_cpp_chat_template_that_raises(gguf_f32, llama_cpp):
    from megactllm.serve import EngineError, load_engine

    engine = load_engine(str(gguf_f32), threads=1)
    engine.info.chat_template = "{{ raise_exception('refused: ' + messages[0]['role']) }}"
    with pytest.raises(EngineError, match="refused: user"):
        engine.chat_tokens(HELLO)
    engine.info.chat_template = "{% if %}"
    with pytest.raises(EngineError, match="chat template"):
        engine.chat_tokens(HELLO)
