"""The OpenAI-compatible server (tools/serve.py, a real subprocess) over a tiny exported GGUF,
driven by the official `openai` client and by hostile raw HTTP."""
import json
import math
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gguf_fixtures import *  # noqa: F401,F403

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key"
QUEUE = 2


@pytest.fixture(scope="module")
def server(gguf_f32, tmp_path_factory, llama_cpp):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "tools" / "serve.py"), "--model", str(gguf_f32), "--port", "0", "--api-key", KEY,
             "--model-name", "tiny-zh", "--threads", "1", "--max-queue", str(QUEUE), "--max-tokens-cap", "128", "--timeout", "60"],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
        try:
            line = proc.stdout.readline()
            assert line.startswith("listening on http://127.0.0.1:"), f"server said {line!r}; log: {log.read_text()}"
            base = line.split()[-1]
            for _ in range(100):
                try:
                    if json.load(urllib.request.urlopen(base + "/health", timeout=5))["status"] == "ok":
                        break
                except OSError:
                    time.sleep(0.1)
            yield dict(base=base, log=log, proc=proc)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=server["base"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _raw(server, path, data: bytes, headers=None):
    request = urllib.request.Request(server["base"] + path, data=data, method="POST",
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def _assert_healthy(server):
    assert json.load(urllib.request.urlopen(server["base"] + "/health", timeout=10))["status"] == "ok"


def test_models_and_chat(client):
    assert [m.id for m in client.models.list().data] == ["tiny-zh"]
    out = client.chat.completions.create(model="tiny-zh", messages=[{"role": "system", "content": "你是助手。"},
                                                                   {"role": "user", "content": "北京是哪个国家的首都？"}],
                                         max_tokens=12, temperature=0)
    assert out.choices[0].message.role == "assistant" and isinstance(out.choices[0].message.content, str)
    assert out.choices[0].finish_reason in ("stop", "length")
    assert 0 < out.usage.completion_tokens <= 12 and out.usage.prompt_tokens > 10
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_stream_equals_unstreamed_at_temperature_0(client):
    messages = [{"role": "user", "content": "请写一首关于春天的短诗。"}]
    plain = client.chat.completions.create(model="tiny-zh", messages=messages, max_tokens=32, temperature=0, seed=1)
    pieces, reasons = [], []
    for chunk in client.chat.completions.create(model="tiny-zh", messages=messages, max_tokens=32, temperature=0, seed=1,
                                                stream=True):
        pieces.append(chunk.choices[0].delta.content or "")
        reasons.append(chunk.choices[0].finish_reason)
    assert len(pieces) > 1 and "".join(pieces) == plain.choices[0].message.content
    assert reasons[-1] == plain.choices[0].finish_reason
    stopped = client.chat.completions.create(model="tiny-zh", messages=messages, max_tokens=32, temperature=0, seed=1,
                                             stop=[plain.choices[0].message.content[5:7]])
    assert plain.choices[0].message.content.startswith(stopped.choices[0].message.content)
    assert len(stopped.choices[0].message.content) < len(plain.choices[0].message.content)


def test_completion_echo_logprobs_match_transformers(client, tiny_hf_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "中国的首都是北京，上海是最大的城市。"
    out = client.completions.create(model="tiny-zh", prompt=prompt, max_tokens=0, echo=True, logprobs=1, temperature=0)
    lp = out.choices[0].logprobs
    tok = AutoTokenizer.from_pretrained(str(tiny_hf_dir), local_files_only=True)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None
    model = AutoModelForCausalLM.from_pretrained(str(tiny_hf_dir), dtype=torch.float32, local_files_only=True).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
    expected = [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    diff = max(abs(a - b) for a, b in zip(lp.token_logprobs[1:], expected))
    print(f"API prompt logprobs vs transformers: max diff {diff:.2e}")
    assert diff < 2e-2 and all(math.isfinite(v) for v in lp.token_logprobs[1:])


def test_16_concurrent_requests_answered_or_503(client, server):
    import openai

    results, errors = [], []

    def ask(i):
        try:
            r = client.chat.completions.create(model="tiny-zh", messages=[{"role": "user", "content": f"第{i}个问题：你好吗？"}],
                                               max_tokens=48, temperature=0.7, seed=i)
            results.append(r.choices[0].message.content)
        except openai.APIStatusError as e:
            errors.append(e.status_code)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert len(results) + len(errors) == 16 and set(errors) <= {503}
    assert len(results) >= QUEUE + 1
    print(f"16 concurrent: {len(results)} answered, {len(errors)} refused with 503")
    _assert_healthy(server)


def test_hostile_inputs_are_4xx_and_server_survives(client, server):
    import openai

    chat = "/v1/chat/completions"
    ok_body = {"model": "tiny-zh", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = {
        "malformed json": (b'{"model": "tiny-zh", "messages": [', 400),
        "not an object": (b"[1, 2, 3]", 400),
        "invalid utf-8": (b'{"model": "tiny-zh", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400),
        "20 MB body": (json.dumps({**ok_body, "pad": "x" * (20 * 2**20)}).encode(), 413),
        "negative max_tokens": (json.dumps({**ok_body, "max_tokens": -5}).encode(), 400),
        "max_tokens over cap": (json.dumps({**ok_body, "max_tokens": 10**6}).encode(), 400),
        "temperature as string": (json.dumps({**ok_body, "temperature": "hot"}).encode(), 400),
        "messages not a list": (json.dumps({**ok_body, "messages": "hi"}).encode(), 400),
        "unknown role": (json.dumps({**ok_body, "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400),
        "unknown model": (json.dumps({**ok_body, "model": "gpt-4"}).encode(), 404),
        "prompt longer than context": (json.dumps({**ok_body, "messages": [{"role": "user", "content": "北京 " * 400}]}).encode(), 400),
    }
    for name, (data, status) in cases.items():
        got, body = _raw(server, chat, data)
        assert got == status, f"{name}: {got} {body}"
        assert set(body["error"]) >= {"message", "type", "param", "code"} and body["error"]["message"], name
    got, body = _raw(server, chat, json.dumps(ok_body).encode(), headers={"Authorization": "Bearer wrong"})
    assert got == 401 and body["error"]["type"] == "authentication_error"
    got, _ = _raw(server, "/v1/nothing", b"{}")
    assert got == 404
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny-zh", prompt="上海 " * 400, max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-zh", messages=[{"role": "user", "content": "x"}], max_tokens=-1)
    _assert_healthy(server)
    assert client.chat.completions.create(**ok_body).choices[0].message.content is not None
    log = server["log"].read_text()
    assert "POST /v1/chat/completions 200 prompt_tokens=" in log and "POST /v1/chat/completions 413" in log
