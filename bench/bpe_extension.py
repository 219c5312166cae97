#!/usr/bin/env python
"""Vocabulary extension of a byte-level BPE tokenizer, measured: appended merges vs added tokens.

    python bench/bpe_extension.py                   # trains a Qwen2-style BPE on ../shared/data first
    python bench/bpe_extension.py --tokenizer DIR --top-k 2000

Words are mined (jieba) from the first half of CLUECorpusSmall; the one-token rate, tokens per
Chinese character and the decode round trip are measured on other Chinese text (the second half of
CLUECorpusSmall and the Chinese Alpaca answers); "unchanged" on English (C4, Alpaca), this
repository's Python code, digits, whitespace runs and emoji, and separately on the Chinese lines
that hold none of the new words. Throughput: one thread, best of 5, interleaved with the original.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bpe_fixtures import build_qwen_style_bpe, corpus_lines  # noqa: E402

from megactllm.tokenizer import extension_metrics as m  # noqa: E402
from megactllm.tokenizer.extend_bpe import extend_bpe, frequent_new_words  # noqa: E402

EMOJI = ["😀😃😄 good", "家人👨‍👩‍👧‍👦", "🇨🇳🇺🇸 flags", "✅ done ❌ failed", "🙂🙃", "I ❤️ NY 🗽"]
DIGITS = ["3.14159265", "2024-05-01 12:30:45", "1,254.68B tokens", "0x7fffffff", "12345678901234567890", "第3章 第12节"]
SPACES = ["a  b", "a\t\tb", "\n\n\nx", "x   \n   y", "    indented", "trailing   ", " \u3000 full-width", "\r\n\r\n"]


def held_out_chinese(data: Path) -> list[str]:
    alpaca = json.loads((data / "sft" / "alpaca_zh_demo.json").read_text(encoding="utf-8"))
    return corpus_lines(data, "heldout") + [r["output"] for r in alpaca if r["output"].strip()]


def plain_texts(data: Path) -> dict[str, list[str]]:
    en = [json.loads(line)["text"] for line in (data / "corpus" / "c4_demo_en.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    alpaca_en = json.loads((data / "sft" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    code = [p.read_text(encoding="utf-8") for p in sorted((REPO / "megactllm").rglob("*.py"))]
    return {"english": en + [r["output"] for r in alpaca_en], "code": code, "digits": DIGITS, "whitespace": SPACES, "emoji": EMOJI}


def measure(base: Path, out: Path, words: list[str], method: str, data: Path) -> dict:
    from tokenizers import Tokenizer

    result = extend_bpe(str(base), str(out), pieces=words, method=method)
    old = Tokenizer.from_file(str(base / "tokenizer.json"))
    new = Tokenizer.from_file(str(out / "tokenizer.json"))
    chinese = held_out_chinese(data)
    plain = plain_texts(data)
    hits = m.single_token_rate(new, words, chinese)
    without = [t for t in chinese if not any(w in t for w in words)]
    everything = chinese + [t for texts in plain.values() for t in texts]
    old_rate, new_rate = m.encode_throughputs([old, new], chinese[:600] + plain["english"][:200] + plain["code"][:30])
    return {
        "method": method,
        "ids": f"{result.old_size} -> {result.new_size}",
        "old ids changed": len(m.changed_ids(old, new)),
        **{f"{k} texts without new words changed": f"{len(m.changed_texts(old, new, v))}/{len(v)}"
           for k, v in ((k, [t for t in v if not any(w in t for w in words)]) for k, v in plain.items())},
        "Chinese lines without new words changed": f"{len(m.changed_texts(old, new, without))}/{len(without)}",
        "round-trip failures": f"{len(m.round_trip_failures(new, everything))}/{len(everything)}",
        "new word one token": f"{hits.single_token}/{hits.occurrences} = {hits.rate:.3f}",
        "zh tokens/char": f"{m.tokens_per_char(old, chinese):.3f} -> {m.tokens_per_char(new, chinese):.3f}",
        "encode throughput new/old": f"{new_rate / old_rate:.3f}",
        "worst words": sorted(hits.misses.items(), key=lambda kv: -kv[1])[:8],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--tokenizer", help="a byte-level BPE tokenizer directory (default: train one, 12,000 ids)")
    p.add_argument("--top-k", type=int, default=1000)
    p.add_argument("--methods", nargs="+", default=["merges", "merges-last", "added"])
    args = p.parse_args()
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.tokenizer) if args.tokenizer else build_qwen_style_bpe(data, Path(tmp) / "base")
        words = frequent_new_words(corpus_lines(data, "train")[:1250], str(base / "tokenizer.json"), args.top_k)
        print(f"{len(words)} words mined: {' '.join(words[:15])} ...")
        for method in args.methods:
            for key, value in measure(base, Path(tmp) / method, words, method, data).items():
                print(f"{method:>7}  {key:<42} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
