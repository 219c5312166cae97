#!/usr/bin/env python
"""What the checkpoint manifest's checksums cost, against the save they are part of.

    python bench/checkpoint_checksum.py                 # CPU, one process, ~70M-parameter model with Adam state
    python bench/checkpoint_checksum.py --hidden 512    # smaller

Saves a model with its (stepped) optimizer through Checkpointer.save (which hashes every file
for the manifest), then hashes the written files again with each candidate (zlib.crc32, the
manifest's; hashlib.blake2b; xxhash.xxh3_64 when installed) and times a verification (sizes
only, and sizes + CRC-32). Prints seconds per GiB of each and the CRC-32's share of the save.
Files are hot in the page cache: the figures are the hashing cost, not the disk's.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from megactllm.testing import run_distributed  # noqa: E402

BLOCK = 8 << 20


def _hash_files(paths, make):
    start = time.perf_counter()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    for path in paths:
        state = make()
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                state.update(view[:n])
    return time.perf_counter() - start


class _Crc:
    def __init__(self):
        self.value = 0

    def update(self, data):
        self.value = zlib.crc32(data, self.value)


def save_and_measure(root: str, hidden: int, layers: int, vocab: int, repeats: int) -> dict:
    """Rank body."""
    import torch

    from megactllm.checkpoint import Checkpointer
    from megactllm.config import load_config
    from megactllm.model import build_model
    from megactllm.parallel import initialize_parallel
    from megactllm.training.model_setup import wrap_model_chunks
    from megactllm.training.optimizer import build_optimizer

    cfg = load_config(None, [
        "model.arch=tiny", f"model.num_layers={layers}", f"model.hidden_size={hidden}",
        f"model.ffn_hidden_size={hidden * 8 // 3 // 8 * 8}", "model.num_attention_heads=8",
        f"model.vocab_size={vocab}", "model.seq_length=32", "model.max_position_embeddings=32",
    ])
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    chunks = wrap_model_chunks(cfg, build_model(cfg.model, cfg.parallel, cfg.optim))
    optimizer = build_optimizer(cfg, chunks)
    for p in (p for c in chunks for p in c.parameters()):  # Adam moments exist after one step
        p.main_grad = torch.zeros_like(p) if not hasattr(p, "main_grad") else p.main_grad
    optimizer.step()
    ckpt = Checkpointer(root)
    saves = []
    for it in range(1, repeats + 1):
        start = time.perf_counter()
        path = ckpt.save(it, chunks, cfg, optimizer=optimizer)
        saves.append(time.perf_counter() - start)
    files = [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]
    size = sum(os.path.getsize(f) for f in files)
    out = {"bytes": size, "files": len(files), "save_s": min(saves)}
    candidates = {"crc32 (zlib)": _Crc, "blake2b (hashlib)": lambda: hashlib.blake2b(digest_size=16)}
    try:
        import xxhash

        candidates["xxh3_64 (xxhash)"] = xxhash.xxh3_64
    except ImportError:
        out["no_xxhash"] = True
    for name, make in candidates.items():
        out[name] = min(_hash_files(files, make) for _ in range(repeats))
    for checksums in (False, True):
        start = time.perf_counter()
        assert Checkpointer.verify(path, checksums=checksums).ok
        out[f"verify_{'crc32' if checksums else 'sizes'}_s"] = time.perf_counter() - start
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (r,) = run_distributed(save_and_measure, 1, os.path.join(tmp, "ckpt"), args.hidden, args.layers, args.vocab,
                               args.repeats, timeout=1800)
    gib = r["bytes"] / 2**30
    print(f"checkpoint: {r['files']} files, {gib:.3f} GiB (model + Adam state, fp32); "
          f"save (manifest included) {r['save_s']:.2f} s = {r['save_s'] / gib:.2f} s/GiB")
    for name in ("crc32 (zlib)", "blake2b (hashlib)", "xxh3_64 (xxhash)"):
        if name in r:
            print(f"  {name:<18} {r[name] / gib:6.3f} s/GiB  ({100 * r[name] / r['save_s']:5.1f}% of the save)")
    if r.get("no_xxhash"):
        print("  xxh3_64 (xxhash)   not installed")
    print(f"verify: sizes only {r['verify_sizes_s'] * 1e3:.1f} ms; sizes + crc32 {r['verify_crc32_s']:.3f} s "
          f"= {r['verify_crc32_s'] / gib:.3f} s/GiB (one process; a resume splits the files over its ranks)")


if __name__ == "__main__":
    main()
