"""Starts `megactllm serve` on a model, asks it one question with the openai client, stops it.

The server binds 127.0.0.1 on a free port (--port 0) and says `listening on http://HOST:PORT`
when ready; its whole output goes to a log file. It is stopped (SIGTERM, then SIGKILL) whatever
happens, so a failed question never leaves a server behind.
"""
from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

from .runner import StageFailed
from .subprocesses import megactllm_cmd

LISTENING = re.compile(r"listening on (http://\S+)")


class RunningServer:
    def __init__(self, cmd: list[str], log_path: Path, cwd: Path, timeout_s: float = 180.0):
        self.log_path = log_path
        self._log = open(log_path, "a", encoding="utf-8")
        self._log.write("$ " + " ".join(cmd) + "\n")
        self._log.flush()
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     encoding="utf-8", errors="replace", bufsize=1)
        self._ready = threading.Event()
        self.url = None
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                why = f"exited with status {self.proc.returncode}" if self.proc.returncode is not None else \
                    f"did not say it was listening within {timeout_s:.0f} s"
                raise StageFailed(f"the server {why}; its output is in {log_path}")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            found = LISTENING.search(line)
            if found and not self._ready.is_set():
                self.url = found.group(1)
                self._ready.set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def ask_server(model: Path, question: str, log_path: Path, cwd: Path, max_tokens: int = 32) -> dict:
    """Serves `model` with `python -m megactllm serve` and asks `question` through /v1/chat/completions."""
    from openai import OpenAI

    cmd = megactllm_cmd("serve", "--model", model, "--host", "127.0.0.1", "--port", 0, "--threads", 1)
    with RunningServer(cmd, log_path, cwd) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120, max_retries=0)
        start = time.monotonic()
        reply = client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=max_tokens,
                                               temperature=0, messages=[{"role": "user", "content": question}])
        seconds = time.monotonic() - start
        url = server.url
    return {"url": url, "model": reply.model, "question": question, "answer": reply.choices[0].message.content,
            "completion_tokens": reply.usage.completion_tokens if reply.usage else None,
            "finish_reason": reply.choices[0].finish_reason, "seconds": round(seconds, 2),
            "server_exit": server.proc.returncode}
