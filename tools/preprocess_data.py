#!/usr/bin/env python
r"""Tokenize a corpus into Megatron indexed datasets ({prefix}_{key}_document.bin/.idx).

Flag names follow Megatron-LM's tools/preprocess_data.py where they exist. Example:

    python tools/preprocess_data.py --input examples/data/sample_corpus.jsonl \
        --output-prefix runs/data/sample --tokenizer-type sentencepiece \
        --tokenizer-model runs/tokenizer/sample.model --append-eod --workers 2
"""
import argparse
import sys

from megactllm.data.pretrain.preprocess import PreprocessConfig, PreprocessError, preprocess
from megactllm.common.corpus import FORMATS, InputError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input")
    g.add_argument("--input", required=True, nargs="+",
                   help="file(s), glob(s) or directory(ies): jsonl, txt (one document per line) or parquet, "
                        "optionally .gz/.zst compressed")
    g.add_argument("--input-format", choices=FORMATS, default=None, help="override the format read from file names")
    g.add_argument("--json-keys", nargs="+", default=["text"],
                   help="keys (parquet: columns) to tokenize; one dataset per key (default: text)")
    g.add_argument("--strict", action="store_true",
                   help="stop at the first bad record (malformed JSON, missing key, non-UTF-8, empty) instead of skipping it")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True,
                   help="sentencepiece or huggingface (Megatron's SentencePieceTokenizer/GPTSentencePieceTokenizer/"
                        "HuggingFaceTokenizer are accepted too)")
    g.add_argument("--tokenizer-model", required=True, help="SentencePiece .model, or HF tokenizer.json / directory")
    g.add_argument("--append-eod", action="store_true", help="append the end-of-document id to every document")
    g = p.add_argument_group("output")
    g.add_argument("--output-prefix", required=True, help="datasets are written to {prefix}_{key}_document.bin/.idx")
    g.add_argument("--per-shard", action="store_true",
                   help="one dataset per input file ({prefix}_{file stem}_{key}_document) instead of one merged dataset")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes (default 1)")
    g.add_argument("--chunk-mb", type=int, default=16, help="split uncompressed text inputs into chunks of this size")
    g.add_argument("--log-interval", type=float, default=5.0, help="seconds between progress lines")
    g.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = PreprocessConfig(
        input=args.input,
        output_prefix=args.output_prefix,
        tokenizer_type=args.tokenizer_type,
        tokenizer_model=args.tokenizer_model,
        json_keys=args.json_keys,
        append_eod=args.append_eod,
        workers=args.workers,
        strict=args.strict,
        per_shard=args.per_shard,
        input_format=args.input_format,
        chunk_bytes=args.chunk_mb << 20,
        log_interval=args.log_interval,
    )
    report = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        summary = preprocess(config, report=report)
    except (PreprocessError, InputError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
