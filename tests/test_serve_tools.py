"""Engines, multi-turn chat and jsonl generation on the tiny exported model (llama.cpp and transformers)."""
import json

import pytest
from gguf_fixtures import *  # noqa: F401,F403

from megactllm.serve import EngineError, SamplingParams, load_engine
from megactllm.serve.chat import ChatSession
from megactllm.serve.generate import GenerateError, generate_jsonl

GREEDY = SamplingParams(max_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def gguf_engine(gguf_f32, llama_cpp):
    return load_engine(str(gguf_f32), f32_kv_cache=True, threads=1)


def test_llama_cpp_and_transformers_engines_agree(gguf_engine, tiny_hf_dir):
    hf = load_engine(str(tiny_hf_dir), threads=1)
    assert (gguf_engine.info.kind, hf.info.kind) == ("llama.cpp", "transformers")
    messages = [{"role": "user", "content": "介绍一下长城。"}]
    ids = gguf_engine.chat_tokens(messages)
    assert hf.chat_tokens(messages) == ids
    assert hf.tokenize("长城很长。") == gguf_engine.tokenize("长城很长。")
    ours, theirs = gguf_engine.complete(ids, GREEDY), hf.complete(ids, GREEDY)
    assert ours.text == theirs.text and ours.completion_tokens == theirs.completion_tokens
    assert "".join(p.text for p in hf.stream(ids, GREEDY)) == theirs.text


def test_chat_session_keeps_history_and_fits_context(gguf_engine):
    session = ChatSession(gguf_engine, system="你是助手。", params=SamplingParams(max_tokens=8, temperature=0.0))
    first = "".join(session.send("你好"))
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"]
    assert session.messages[-1]["content"] == first
    "".join(session.send("再说一遍"))
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    for i in range(12):  # the 256-token context overflows: old exchanges are dropped, the system prompt kept
        "".join(session.send(f"第{i}个问题：" + "请介绍一下中国的历史、地理、文化和经济。" * 2))
    assert session.messages[0]["role"] == "system" and len(session.messages) < 1 + 2 * 14
    with pytest.raises(EngineError, match="context"):
        "".join(session.send("上海" * 400))
    session.reset()
    assert session.messages == [{"role": "system", "content": "你是助手。"}]


def test_generate_jsonl(gguf_engine, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"id": 1, "prompt": "中国的首都是"},
        {"id": 2, "messages": [{"role": "user", "content": "你好"}]},
    ]) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert generate_jsonl(gguf_engine, src, out, GREEDY, progress=None) == 2
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [1, 2] and all(0 < r["completion_tokens"] <= 16 for r in rows)
    assert rows[0]["completion"] == gguf_engine.complete(gguf_engine.tokenize("中国的首都是"), GREEDY).text

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n', encoding="utf-8")
    with pytest.raises(GenerateError, match=r"bad.jsonl:2: needs a string 'prompt'"):
        generate_jsonl(gguf_engine, bad, tmp_path / "o.jsonl", GREEDY, progress=None)
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 1  # the finished record is kept


def _tool(tool: str, args: list, hide: str = ""):
    """Run tools/<tool> in a subprocess; `hide` makes that module's import fail (as without the extra)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    code = (f"import sys, runpy; sys.modules[{hide!r}] = None; " if hide else "import sys, runpy; ") + \
        f"sys.argv = [{tool!r}] + {args!r}; runpy.run_path({str(repo / 'tools' / tool)!r}, run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, timeout=120)


@pytest.mark.parametrize("tool,args,hide,what", [
    ("serve.py", ["--model", "MODEL"], "fastapi", "fastapi"),
    ("serve.py", ["--model", "MODEL"], "uvicorn", "uvicorn"),
    ("chat.py", ["MODEL"], "llama_cpp", "llama-cpp-python"),
    ("generate.py", ["MODEL", "in.jsonl", "out.jsonl"], "llama_cpp", "llama-cpp-python"),
])
def test_tools_without_the_serve_extra_say_what_to_install(tmp_path, tool, args, hide, what):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    out = _tool(tool, [str(model) if a == "MODEL" else str(tmp_path / a) if a.endswith(".jsonl") else a for a in args], hide)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and what in lines[0], out.stderr
    assert 'pip install -e ".[serve]"' in lines[0]


@pytest.mark.parametrize("tool,flag,value", [
    ("chat.py", "--max-tokens", "0"), ("chat.py", "--repetition-penalty", "0"), ("chat.py", "--top-k", "-5"),
    ("chat.py", "--seed", str(2**70)), ("generate.py", "--max-tokens", "0"), ("generate.py", "--temperature", "3"),
])
def test_tools_refuse_sampling_values_the_engines_cannot_take(tmp_path, tool, flag, value):
    args = ["MODEL.gguf"] + (["in.jsonl", "out.jsonl"] if tool == "generate.py" else []) + [flag, value]
    out = _tool(tool, args)
    assert out.returncode == 2 and out.stderr.startswith(f"error: {flag}:"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
