#!/usr/bin/env python
r"""Tokenize preference pairs (prompt or conversation + chosen + rejected, json/jsonl) with the
megactllm chat template into an indexed DPO dataset; each pair is one sample holding both halves.

    python tools/preprocess_dpo.py --input ../shared/data/dpo/dpo_zh_demo.json \
        --output-prefix data/dpo_zh --language zh --seq-length 512 \
        --tokenizer-type sentencepiece --tokenizer-model tokenizer/chat.model

Each half keeps at most seq_length + 1 tokens: a long prompt is cut from the left to at most half
of that, then responses from the right; both halves keep the same prompt. Cuts and bad records
(with file:record) are counted and reported.
"""
import argparse
import sys

from megactllm.data.chat.dpo_preprocess import preprocess_dpo
from megactllm.data.chat.records import RecordError
from megactllm.tokenizer import load_tokenizer
from megactllm.tokenizer.chat_template import ChatTokenizationError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+", help=".json (array) / .jsonl files, or directories of them")
    p.add_argument("--output-prefix", required=True, help="writes {prefix}.bin/.idx/.json")
    p.add_argument("--tokenizer-type", default="sentencepiece")
    p.add_argument("--tokenizer-model", required=True, help="a tokenizer that has <|im_start|> and <|im_end|> as tokens")
    p.add_argument("--seq-length", type=int, required=True, help="training sequence length (each half keeps seq_length + 1 tokens)")
    p.add_argument("--language", default=None, help="tag stored in the sidecar (zh, en, ...)")
    p.add_argument("--max-bad-fraction", type=float, default=0.5, help="fail when more than this share of records is unusable")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer_type, args.tokenizer_model)
    try:
        report = preprocess_dpo(args.input, args.output_prefix, tokenizer, args.seq_length, args.language)
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
