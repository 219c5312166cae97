#!/usr/bin/env python
"""Benchmark: CPU decode speed of the CT-LLM 2B shape (random weights) on transformers (f32) and
llama.cpp (f16, q8_0, q4_0, q4_k_m GGUF), at 1 and 2 threads, each beside its memory-bandwidth
bound; GGUF export time against reading and writing the same bytes; the server's overhead.

Figures printed (ratios against references measured in this run):
  copy bandwidth   numpy copy of a 512 MiB array: (read + write bytes) / time
  decode           forced one-token decode steps after a 32-token prompt, tokens/s, and the bound
                   tokens/s = bandwidth / (weight bytes read per token: every matrix once, the
                   embedding one row); "of bound" = achieved / bound
  export           export_gguf (bf16 HF dir -> f16 GGUF) seconds vs reading the source files and
                   writing as many bytes as the GGUF has ("x I/O")
  server           tokens/s through the OpenAI API (in-process uvicorn, q4_0 engine) vs direct
                   engine calls on the same prompts, interleaved; target >= 0.95x

The full 2B model (32 layers) needs ~10 GB RAM in f32: --layers N builds fewer layers of the same
shape (the vocabulary stays 125,696), and the printed bounds use that N.

    python bench/decode.py --layers 2 --threads 1,2
"""
import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEGACTLLM_SHARED_DATA", REPO.parent / "shared" / "data"))
CTLLM_2B = dict(hidden_size=2048, intermediate_size=5504, num_attention_heads=16, num_key_value_heads=16,
                vocab_size=125696, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                tie_word_embeddings=False)


def copy_bandwidth() -> float:
    src = np.ones(64 * 2**20, dtype=np.float64)  # 512 MiB
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


def bytes_per_token(path_or_model) -> int:
    """Weight bytes one decode step reads: every matrix once, the token embedding a single row."""
    if isinstance(path_or_model, torch.nn.Module):
        total = sum(p.numel() * p.element_size() for n, p in path_or_model.named_parameters() if "embed_tokens" not in n)
        emb = path_or_model.get_input_embeddings().weight
        return total + emb.shape[1] * emb.element_size()
    import gguf

    total = 0
    for t in gguf.GGUFReader(str(path_or_model)).tensors:
        total += int(t.n_bytes) if t.name != "token_embd.weight" else int(t.n_bytes) // int(t.shape[-1])
    return total


def build_hf(out: Path, layers: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **CTLLM_2B))
    model.to(torch.bfloat16).save_pretrained(out)  # as models ship; transformers runs it in f32 below
    shutil.copy(SHARED / "tokenizers" / "map_neo_sp.model", out / "tokenizer.model")
    return out


def decode_hf(hf_dir: Path, threads: int, steps: int) -> float:
    from transformers import AutoModelForCausalLM, DynamicCache

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    prompt = torch.arange(100, 132).unsqueeze(0)
    with torch.no_grad():
        cache = DynamicCache()
        model(prompt, past_key_values=cache, use_cache=True)
        t = time.perf_counter()
        for i in range(steps):
            model(torch.tensor([[200 + i]]), past_key_values=cache, use_cache=True)
        return steps / (time.perf_counter() - t)


def decode_llama(path: Path, threads: int, steps: int) -> float:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=threads, n_threads_batch=threads, verbose=False)
    llm.eval(list(range(100, 132)))
    t = time.perf_counter()
    for i in range(steps):
        llm.eval([200 + i])
    return steps / (time.perf_counter() - t)


def server_overhead(path: Path, rounds: int, max_tokens: int):
    import openai
    import uvicorn

    from megactllm.serve import SamplingParams
    from megactllm.serve.llama_engine import LlamaCppEngine
    from megactllm.serve.run import bind
    from megactllm.serve.server import create_app

    engine = LlamaCppEngine(path, n_ctx=512, threads=2, logits_all=False, name="bench")
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="error"))
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key="x", max_retries=0)
    prompts = [f"第{i}段：中国的城市和历史。" for i in range(rounds)]
    direct, api = [], []
    for prompt in prompts:  # interleaved, so load changes hit both alike
        t = time.perf_counter()
        out = engine.complete(engine.tokenize(prompt), SamplingParams(max_tokens=max_tokens, temperature=0.0))
        direct.append(out.completion_tokens / (time.perf_counter() - t))
        t = time.perf_counter()
        r = client.completions.create(model="bench", prompt=prompt, max_tokens=max_tokens, temperature=0.0)
        api.append(r.usage.completion_tokens / (time.perf_counter() - t))
    server.should_exit = True
    thread.join(timeout=10)
    return float(np.median(direct)), float(np.median(api))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32, help="transformer layers of the 2B shape (32 = the full model)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--steps", type=int, default=16, help="decode steps per measurement")
    p.add_argument("--types", default="f16,q8_0,q4_0,q4_k_m")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers f32 run")
    p.add_argument("--server-rounds", type=int, default=5)
    p.add_argument("--workdir", help="keep files here (default: a temporary directory)")
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    from megactllm.convert.gguf import export_gguf

    work = Path(args.workdir or tempfile.mkdtemp(prefix="megactllm-bench-decode-"))
    work.mkdir(parents=True, exist_ok=True)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth: {bandwidth / 1e9:.2f} GB/s   shape: ctllm-2b with {args.layers}/32 layers, vocab 125696")
    hf_dir = build_hf(work / "hf", args.layers)

    # Export time against plain I/O of the same bytes.
    t = time.perf_counter()
    f16 = export_gguf(hf_dir, work / "model-f16.gguf", "f16", overwrite=True, progress_stream=None).path
    export_s = time.perf_counter() - t
    t = time.perf_counter()
    for src in hf_dir.glob("*.safetensors"):
        src.read_bytes()
    with open(work / "io-reference.bin", "wb") as f:
        f.write(np.zeros(f16.stat().st_size, dtype=np.uint8).tobytes())
        f.flush()
        os.fsync(f.fileno())
    io_s = time.perf_counter() - t
    (work / "io-reference.bin").unlink()
    print(f"export f16 GGUF ({f16.stat().st_size / 2**30:.2f} GiB): {export_s:.1f}s vs read+write same bytes {io_s:.1f}s "
          f"= {export_s / io_s:.1f}x I/O")

    files = {"f16": f16}
    for outtype in args.types.split(","):
        if outtype != "f16":
            files[outtype] = export_gguf(hf_dir, work / f"model-{outtype}.gguf", outtype, overwrite=True, progress_stream=None).path

    rows = []
    for n in threads:
        if not args.no_hf:
            from transformers import AutoModelForCausalLM

            bpt = bytes_per_token(AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32))
            rows.append(("transformers f32", n, decode_hf(hf_dir, n, args.steps), bpt))
        for outtype in args.types.split(","):
            rows.append((f"llama.cpp {outtype}", n, decode_llama(files[outtype], n, args.steps), bytes_per_token(files[outtype])))
    print(f"{'engine':20s} {'threads':>7s} {'tok/s':>8s} {'MB/token':>9s} {'bound tok/s':>11s} {'of bound':>8s}")
    for name, n, tps, bpt in rows:
        bound = bandwidth / bpt
        print(f"{name:20s} {n:7d} {tps:8.2f} {bpt / 1e6:9.1f} {bound:11.2f} {tps / bound:8.1%}")

    if "q4_0" in files and args.server_rounds:
        direct, api = server_overhead(files["q4_0"], args.server_rounds, max_tokens=32)
        print(f"server q4_0, 2 threads: direct {direct:.2f} tok/s, through the API {api:.2f} tok/s = {api / direct:.3f}x "
              "(median of interleaved rounds; target >= 0.95x)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
