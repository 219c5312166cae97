#!/usr/bin/env python
"""Show a tokenized dataset: document and token counts, a length histogram, decoded samples.

    python tools/inspect_dataset.py runs/data/sample_text_document --samples 3
The tokenizer is taken from the dataset's .json sidecar unless --tokenizer-model is given.
"""
import argparse
import dataclasses
import json
import os
import sys

from megactllm.data.pretrain.dataset_stats import dataset_stats, format_stats
from megactllm.data.pretrain.indexed import DatasetFormatError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefix", help="dataset prefix (or its .bin/.idx path)")
    p.add_argument("--tokenizer-type", default=None)
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--samples", type=int, default=3, help="decoded documents to show")
    p.add_argument("--max-chars", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    args = p.parse_args(argv)
    try:
        stats = dataset_stats(args.prefix)
    except DatasetFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(dataclasses.asdict(stats), ensure_ascii=False, indent=1))
        return 0
    tokenizer = None
    meta = stats.metadata or {}
    kind = args.tokenizer_type or meta.get("tokenizer_type")
    model = args.tokenizer_model or meta.get("model_path")
    if kind and model and os.path.exists(model):
        from megactllm.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(kind, model)
    elif args.samples:
        print("(no tokenizer found: pass --tokenizer-type/--tokenizer-model to see decoded samples)", file=sys.stderr)
    print(format_stats(stats, tokenizer, args.samples, args.max_chars, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
