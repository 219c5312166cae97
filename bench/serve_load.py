#!/usr/bin/env python
"""Benchmark: the OpenAI-compatible server under load, for each engine (llama.cpp on a GGUF file,
transformers on an HF directory), with tiny random models built here.

`megactllm serve` runs as its own process (its memory is measured alone). N client threads
(default 32) send completions for a fixed time: half streamed, and a quarter of the streams leave
after their first pieces (the socket closed mid-answer); with N well past --max-queue, some
requests find the queue full. A poller asks GET /health throughout.

Figures per engine: requests completed, refused with 503 (queue full), streams left on purpose,
other statuses, p50/p95 latency of completed requests, /health answers (and the slowest), the
server's resident memory before and after the load.

The bar (exit code 1 when missed): no 5xx other than 503, no hang (every request answered or
refused within the client timeout, and a request after the load completes), /health answered
throughout, memory after the load within 5% of before it, every completed answer whole (a greedy
answer equal to the one the same request got before the load, streamed or not, ending with
[DONE] for a stream).

    python bench/serve_load.py --clients 32 --seconds 20
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEGACTLLM_SHARED_DATA", REPO.parent / "shared" / "data"))
TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, initializer_range=0.1, rope_theta=10000.0, rms_norm_eps=1e-6)
PROMPTS = ["中国的城市和历史：", "今天的天气很好，我们", "The history of the city is", "人工智能的发展"]
MAX_TOKENS = 24


def build_models(out: Path) -> dict:
    """{engine: model path}: a tiny random LLaMA with the MAP-NEO SentencePiece vocabulary, as an HF
    directory (transformers) and exported to an f32 GGUF (llama.cpp)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from megactllm.convert.gguf import export_gguf
    from megactllm.convert.tokenizer_export import export_tokenizer
    from megactllm.tokenizer import load_tokenizer

    sp_model = SHARED / "tokenizers" / "map_neo_sp.model"
    vocab = load_tokenizer("sentencepiece", str(sp_model)).vocab_size
    hf_dir = out / "tiny-hf"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **TINY)).save_pretrained(hf_dir)
    export_tokenizer("sentencepiece", sp_model, hf_dir, model_max_length=TINY["max_position_embeddings"])
    gguf = out / "tiny-f32.gguf"
    export_gguf(hf_dir, gguf, "f32", progress_stream=None)
    return {"llama.cpp (GGUF)": gguf, "transformers (HF)": hf_dir}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Server:
    def __init__(self, model: Path, max_queue: int, threads: int, log: Path):
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "megactllm", "serve", "--model", str(model), "--port", "0", "--model-name", "bench",
             "--max-queue", str(max_queue), "--threads", str(threads), "--timeout", "60"],
            stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        line = self.proc.stdout.readline()
        match = re.search(r"listening on http://([^:]+):(\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"the server did not start: {line!r}; see {log}")
        self.host, self.port = match.group(1), int(match.group(2))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if request(self, "GET", "/health", None, timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"/health never answered; see {log}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def request(server, method: str, path: str, body, timeout: float):
    """(status, body bytes) of one plain request."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def completion(server, prompt: str, stream: bool, leave_after: int = 0, timeout: float = 120.0) -> dict:
    """One /v1/completions request: {status, text, whole, left, seconds}. leave_after > 0 closes the
    socket after that many streamed pieces (a client that goes away mid-answer)."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0, "stream": stream}
    start = time.monotonic()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200 or not stream:
            raw = response.read()
            out = {"status": response.status, "seconds": time.monotonic() - start, "left": False}
            if response.status == 200:
                choice = json.loads(raw)["choices"][0]
                out.update(text=choice["text"], whole=choice.get("finish_reason") in ("stop", "length"))
            return out
        pieces, done, finish, events = [], False, None, 0
        for line in response:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:  # an error after the stream started: not a whole answer
                break
            choice = chunk["choices"][0]
            pieces.append(choice.get("text") or "")
            finish = choice.get("finish_reason") or finish
            events += 1
            if leave_after and events >= leave_after:
                conn.sock.close()  # leave mid-answer without reading the rest
                return {"status": 200, "seconds": time.monotonic() - start, "left": True}
        return {"status": 200, "seconds": time.monotonic() - start, "left": False, "text": "".join(pieces),
                "whole": done and finish in ("stop", "length")}
    finally:
        conn.close()


def load(server, clients: int, seconds: float, references: dict) -> dict:
    results, lock = [], threading.Lock()
    errors = []
    stop_at = time.monotonic() + seconds
    health = {"ok": 0, "failed": 0, "slowest": 0.0}
    loading = threading.Event()
    loading.set()

    def client(k: int) -> None:
        i = 0
        while time.monotonic() < stop_at:
            prompt, stream = PROMPTS[(k + i) % len(PROMPTS)], (k + i) % 2 == 0
            leave = 2 if stream and (k + i) % 4 == 0 else 0  # a quarter of all requests: half the streams
            try:
                r = completion(server, prompt, stream, leave)
            except (OSError, http.client.HTTPException, ValueError) as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                r = None
            if r is not None:
                r["prompt"], r["stream"] = prompt, stream
                with lock:
                    results.append(r)
                if r["status"] == 503:
                    time.sleep(0.25)  # a client told to retry later does not spin
            i += 1

    def poll() -> None:
        while loading.is_set():
            t = time.monotonic()
            try:
                ok = request(server, "GET", "/health", None, timeout=5)[0] == 200
            except OSError:
                ok = False
            health["ok" if ok else "failed"] += 1
            health["slowest"] = max(health["slowest"], time.monotonic() - t)
            time.sleep(0.25)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 180)
    hung = sum(t.is_alive() for t in threads)
    # The server drains: the next request must be answered (no hang), whole.
    t = time.monotonic()
    final = completion(server, PROMPTS[0], False, timeout=120)
    drain = time.monotonic() - t
    loading.clear()
    poller.join(10)
    completed = [r for r in results if r["status"] == 200 and not r["left"]]
    broken = [r for r in completed if not r.get("whole") or r.get("text") != references[(r["prompt"], r["stream"])]]
    latencies = sorted(r["seconds"] for r in completed)
    statuses = {}
    for r in results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "requests": len(results), "completed": len(completed), "503": statuses.get(503, 0),
        "left mid-answer": sum(r["left"] for r in results), "statuses": statuses, "client errors": errors,
        "p50 s": statistics.median(latencies) if latencies else None,
        "p95 s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None,
        "not whole": len(broken), "hung clients": hung, "health": health, "drain s": drain,
        "final": final["status"] == 200 and final.get("text") == references[(PROMPTS[0], False)],
    }


def run_engine(name: str, model: Path, args, work: Path) -> tuple[dict, list[str]]:
    server = Server(model, args.max_queue, args.threads, work / f"server-{name.split()[0]}.log")
    try:
        references = {}
        for prompt in PROMPTS:  # the answers every later request must repeat (greedy), and a warm-up
            for stream in (False, True):
                r = completion(server, prompt, stream)
                if r["status"] != 200 or not r.get("whole"):
                    raise RuntimeError(f"{name}: the reference request failed: {r}")
                references[(prompt, stream)] = r["text"]
        time.sleep(1.0)
        before = rss_bytes(server.proc.pid)
        figures = load(server, args.clients, args.seconds, references)
        time.sleep(2.0)
        figures["memory before MiB"] = before / 2**20
        figures["memory after MiB"] = rss_bytes(server.proc.pid) / 2**20
    finally:
        server.stop()
    bar = []
    bad = {s: n for s, n in figures["statuses"].items() if s not in (200, 503)}
    if bad:
        bar.append(f"statuses other than 200/503: {bad}")
    if figures["client errors"]:
        bar.append(f"{len(figures['client errors'])} requests failed at the socket: {figures['client errors'][:3]}")
    if figures["hung clients"] or not figures["final"]:
        bar.append(f"hang: {figures['hung clients']} clients still waiting; request after the load answered "
                   f"whole: {figures['final']}")
    if figures["health"]["failed"]:
        bar.append(f"/health failed {figures['health']['failed']} times")
    if figures["memory after MiB"] > 1.05 * figures["memory before MiB"]:
        bar.append(f"memory {figures['memory before MiB']:.1f} -> {figures['memory after MiB']:.1f} MiB (> +5%)")
    if figures["not whole"]:
        bar.append(f"{figures['not whole']} completed answers not whole (differ from the reference)")
    if not figures["completed"] or not figures["503"]:
        bar.append(f"the load did not exercise both paths: {figures['completed']} completed, {figures['503']} 503")
    return figures, bar


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20.0, help="load time per engine")
    p.add_argument("--max-queue", type=int, default=8, help="the server's --max-queue")
    p.add_argument("--threads", type=int, default=1, help="the engine's threads")
    p.add_argument("--engines", default="llama.cpp,transformers", help="comma-separated: llama.cpp, transformers")
    p.add_argument("--keep", type=Path, help="keep the models and server logs here")
    args = p.parse_args(argv)
    from megactllm.output import configure_output

    configure_output()  # no third-party progress bars between the figures
    work = Path(tempfile.mkdtemp(prefix="serve-load-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    failed = False
    try:
        models = build_models(work)
        print(f"serve_load: {args.clients} clients x {args.seconds:g} s per engine, --max-queue {args.max_queue}, "
              f"max_tokens {MAX_TOKENS}, a quarter of requests are streams that leave after 2 pieces")
        for name, model in models.items():
            if not any(e.strip() and name.startswith(e.strip()) for e in args.engines.split(",")):
                continue
            f, bar = run_engine(name, model, args, work)
            print(f"\n{name}")
            print(f"  requests {f['requests']}: completed {f['completed']}, 503 {f['503']}, left mid-answer "
                  f"{f['left mid-answer']}, statuses {f['statuses']}")
            if f["completed"]:
                print(f"  latency of completed: p50 {f['p50 s']:.3f} s, p95 {f['p95 s']:.3f} s")
            print(f"  /health: {f['health']['ok']} ok, {f['health']['failed']} failed, slowest "
                  f"{f['health']['slowest']:.3f} s; drained in {f['drain s']:.2f} s")
            print(f"  memory: {f['memory before MiB']:.1f} MiB before, {f['memory after MiB']:.1f} MiB after "
                  f"({f['memory after MiB'] / f['memory before MiB'] - 1:+.1%})")
            print(f"  answers not whole: {f['not whole']}")
            print("  bar: " + ("met" if not bar else "MISSED: " + "; ".join(bar)))
            failed |= bool(bar)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
