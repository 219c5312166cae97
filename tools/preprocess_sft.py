#!/usr/bin/env python
r"""Tokenize instruction data (alpaca or conversation records, json/jsonl) with the megactllm chat
template into an indexed SFT dataset that carries the loss mask (assistant tokens only).

One output per language or source, mixed at training time by ratio in the recipe, e.g.
`data.train_data_path: ["4", "data/sft_zh", "1", "data/sft_en"]` for zh:en = 4:1:

    python tools/preprocess_sft.py --input ../shared/data/sft/alpaca_zh_demo.json \
        --output-prefix data/sft_zh --language zh --seq-length 512 \
        --tokenizer-type sentencepiece --tokenizer-model tokenizer/chat.model

Samples keep at most seq_length + 1 tokens (cut from the right); a sample left without any
assistant token is dropped. Both are counted, and bad records are reported with file:record.
"""
import argparse
import sys

from megactllm.data.chat.sft_preprocess import preprocess_sft
from megactllm.data.chat.records import RecordError
from megactllm.tokenizer import load_tokenizer
from megactllm.tokenizer.chat_template import ChatTokenizationError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+", help=".json (array) / .jsonl files, or directories of them")
    p.add_argument("--output-prefix", required=True, help="writes {prefix}.bin/.idx/.json")
    p.add_argument("--tokenizer-type", default="sentencepiece")
    p.add_argument("--tokenizer-model", required=True, help="a tokenizer that has <|im_start|> and <|im_end|> as tokens")
    p.add_argument("--seq-length", type=int, required=True, help="training sequence length (samples keep seq_length + 1 tokens)")
    p.add_argument("--language", default=None, help="tag stored in the sidecar (zh, en, ...)")
    p.add_argument("--max-bad-fraction", type=float, default=0.5,
                   help="fail when more than this share of records is unusable (default 0.5)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer_type, args.tokenizer_model)
    try:
        report = preprocess_sft(args.input, args.output_prefix, tokenizer, args.seq_length, args.language,
                                progress=lambda n: print(f"  {n} records", file=sys.stderr, flush=True))
    except (ChatTokenizationError, RecordError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.text(args.output_prefix))
    if report.records and report.bad.total > args.max_bad_fraction * report.records:
        print(f"error: {report.bad.total} of {report.records} records are bad; is this the right input format?", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
