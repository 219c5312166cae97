#!/usr/bin/env python
r"""Merge Megatron indexed datasets (same tokenizer/dtype) into one, streaming.

    python tools/merge_datasets.py --input data/shard_a_text_document data/shard_b_text_document \
        --output-prefix data/all_text_document
    python tools/merge_datasets.py --input 'data/*_text_document.idx' --output-prefix data/all_text_document
"""
import argparse
import glob
import sys

from megactllm.data.pretrain.indexed import DatasetFormatError, merge_datasets


def expand(specs):
    prefixes = []
    for spec in specs:
        hits = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]
        if not hits:
            raise DatasetFormatError(f"--input {spec} matches nothing")
        for hit in hits:
            prefix = hit[:-4] if hit.endswith((".bin", ".idx")) else hit
            if prefix not in prefixes:
                prefixes.append(prefix)
    return prefixes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="dataset prefixes, .bin/.idx paths or globs, in order")
    p.add_argument("--output-prefix", required=True, help="prefix of the merged dataset")
    args = p.parse_args(argv)
    try:
        prefixes = expand(args.input)
        if args.output_prefix in prefixes:
            raise DatasetFormatError(f"--output-prefix {args.output_prefix} is also an input")
        merged = merge_datasets(prefixes, args.output_prefix)
    except (DatasetFormatError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"merged {len(prefixes)} datasets into {args.output_prefix}: {merged.num_documents:,} documents, "
          f"{merged.num_tokens:,} tokens, dtype {merged.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
