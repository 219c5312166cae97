"""Generation tasks: answers through the chat template, rated by a judge over the OpenAI chat
protocol (a local HTTP endpoint on 127.0.0.1), skipped and said so without one; a failing judge is
a named error."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from eval_testing import add_chat_template, save_tiny_llama

from megactllm.eval import EvalDataError
from megactllm.eval.backends.hf import HFBackend
from megactllm.eval.generation import JudgeError, OpenAIJudge, read_open_questions, run_generation_task


class _Judge(BaseHTTPRequestHandler):
    replies: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, body))
        status, payload = self.replies.pop(0)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):
        pass


@pytest.fixture()
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Judge.replies, _Judge.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _reply(content):
    return 200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, sp_model_path):
    return add_chat_template(save_tiny_llama(tmp_path_factory.mktemp("chat_llama"), sp_model_path, max_position_embeddings=128))


def test_answers_rated_by_judge_and_skipped_without(chat_model, tmp_path, judge_server):
    questions_file = tmp_path / "chc.jsonl"
    questions_file.write_text(
        '{"id": "q1", "question": "介绍一下长城。", "category": "history"}\n'
        '{"id": "q2", "question": "写一首关于春天的诗。", "category": "writing", "reference": "春眠不觉晓"}\n', encoding="utf-8")
    questions = read_open_questions(questions_file)
    backend = HFBackend(chat_model, batch_size=2)
    expected_prompt = backend.tokenizer.apply_chat_template(
        [{"role": "user", "content": "介绍一下长城。"}], add_generation_prompt=True, tokenize=False)
    assert expected_prompt.endswith("<|im_start|>assistant\n")

    unjudged = run_generation_task(backend, questions, tmp_path / "a.jsonl", None, max_new_tokens=6)
    assert unjudged["mean_rating"] is None and unjudged["judge"].startswith("skipped")
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["rating"] for r in records] == [None, None] and all(isinstance(r["answer"], str) for r in records)

    _Judge.replies = [_reply("Accurate and fluent.\n[[7]]"), _reply("No rating here.")]
    judged = run_generation_task(backend, questions, tmp_path / "b.jsonl", OpenAIJudge(judge_server, "judge-m"), max_new_tokens=6)
    assert (judged["judged"], judged["unrated"], judged["mean_rating"]) == (1, 1, 7.0)
    assert judged["mean_rating_by_category"] == {"history": 7.0}
    path, body = _Judge.seen[1]
    assert path == "/v1/chat/completions" and body["model"] == "judge-m" and body["temperature"] == 0
    assert "春眠不觉晓" in body["messages"][0]["content"] and records[1]["answer"] in body["messages"][0]["content"]


def test_failing_judge_and_bad_files_are_named(chat_model, tmp_path, judge_server, sp_model_path):
    questions = [read_open_questions_row(tmp_path)]
    backend = HFBackend(chat_model)
    for reply, message in (((500, "overloaded"), "HTTP 500"), ((200, "not json"), "not an OpenAI chat completion")):
        _Judge.replies = [reply]
        with pytest.raises(JudgeError, match=f"question x1: {message}"):
            run_generation_task(backend, questions, tmp_path / "c.jsonl", OpenAIJudge(judge_server, "j"), max_new_tokens=2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{"prompt": "no question"}\n', encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"bad\.jsonl, row 2: expected a JSON object with a 'question'"):
        read_open_questions(bad)
    plain = save_tiny_llama(tmp_path / "plain", sp_model_path, max_position_embeddings=64)
    with pytest.raises(ValueError, match="no chat template"):
        HFBackend(plain).chat_prompt([{"role": "user", "content": "hi"}])


def read_open_questions_row(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text('{"id": "x1", "question": "你好"}\n', encoding="utf-8")
    return read_open_questions(path)[0]
