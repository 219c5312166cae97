#!/usr/bin/env python
"""The pre-flight memory estimate against measured peaks of real training steps on CPU.

Each configuration runs a few optimizer steps of the real Trainer in a fresh process
(megactllm.testing.memory_probe) and prints the estimate, the measured peak over the process's
own baseline (Python + torch + megatron-core, measured in that process and taken out), and their
ratio. "live" tells glibc to return freed blocks, so RSS follows live tensors (what the estimate
predicts, like torch.cuda.max_memory_allocated on a GPU); "default" is a plain process, whose RSS
also keeps freed blocks glibc holds on to.

    python bench/memory_estimate.py [--iters 2] [--allocator live,default]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SHARED = Path(os.environ.get("MEGACTLLM_SHARED_DATA", REPO.parent / "shared" / "data"))


def configs(workdir: str) -> dict:
    from train_utils import write_corpus

    synthetic = write_corpus(f"{workdir}/synthetic", seed=0, documents=2000)
    base = [f"data.data_path=[{synthetic}]", "data.split=95,5,0", f"data.data_cache_path={workdir}/cache",
            "train.duration=3 iterations", "validation.iters=0", "model.vocab_size=512"]
    wide = ["model.hidden_size=256", "model.ffn_hidden_size=688", "model.num_attention_heads=8",
            "model.seq_length=512", "model.max_position_embeddings=512", "train.micro_batch_size=4",
            "train.global_batch_size=4", "model.num_layers=8"]
    out = {
        "tiny (4x64, vocab 512, s128 b4)": base + ["model.arch=tiny", "model.vocab_size=512", "model.seq_length=128",
                                                    "train.micro_batch_size=4", "train.global_batch_size=8"],
        "8x256 s512 b4": base + wide,
        "8x256 s512 b4 selective": base + wide + ["parallel.recompute_granularity=selective"],
        "8x256 s512 b4 full recompute": base + wide + ["parallel.recompute_granularity=full"],
        "8x256 s512 b4 GQA 8/2": base + wide + ["model.num_query_groups=2"],
    }
    tokenizer = SHARED / "tokenizers" / "map_neo_sp.model"
    if tokenizer.is_file():
        from megactllm.data.pretrain.preprocess import PreprocessConfig, preprocess

        prefix = f"{workdir}/zh"
        preprocess(PreprocessConfig(input=[str(REPO / "examples/data/sample_corpus.jsonl")], output_prefix=prefix,
                                    tokenizer_type="sentencepiece", tokenizer_model=str(tokenizer), append_eod=True))
        zh = [f"data.data_path=[{prefix}_text_document]", "data.split=95,5,0", f"data.data_cache_path={workdir}/cache",
              "train.duration=3 iterations", "validation.iters=0", f"data.tokenizer_model={tokenizer}"]
        out["tiny (4x64, vocab 64000, s128 b4)"] = zh + ["model.arch=tiny", "train.micro_batch_size=4",
                                                         "train.global_batch_size=8"]
        out["8x256 GQA 8/4, vocab 64000, s256 b2"] = zh + [
            "model.num_layers=8", "model.hidden_size=256", "model.ffn_hidden_size=688", "model.num_attention_heads=8",
            "model.num_query_groups=4", "model.seq_length=256", "model.max_position_embeddings=256",
            "model.vocab_size=64000", "train.micro_batch_size=2", "train.global_batch_size=4"]
    return out


def probe(overrides, iters, allocator) -> dict:
    cmd = [sys.executable, "-m", "megactllm.testing.memory_probe", "--iters", str(iters), *overrides]
    if allocator == "default":
        cmd.insert(3, "--allocator-default")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    if out.returncode:
        raise SystemExit(f"probe failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--allocator", default="live,default")
    args = parser.parse_args()
    from megactllm.output import configure_output

    configure_output()
    mib = 2**20
    with tempfile.TemporaryDirectory() as workdir:
        print(f"{'configuration':40s} {'alloc':8s} {'baseline':>9s} {'estimate':>9s} {'measured':>9s} {'est/meas':>8s}")
        for name, overrides in configs(workdir).items():
            for allocator in args.allocator.split(","):
                r = probe(overrides, args.iters, allocator)
                ratio = r["estimate_bytes"] / r["measured_bytes"]
                print(f"{name:40s} {allocator:8s} {r['baseline_bytes'] / mib:7.0f}Mi {r['estimate_bytes'] / mib:7.0f}Mi "
                      f"{r['measured_bytes'] / mib:7.0f}Mi {ratio:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
