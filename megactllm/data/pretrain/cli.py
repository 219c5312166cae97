"""The pretraining-data commands: tokenize, inspect-dataset, merge-datasets, preprocess-parallel
(`megactllm <command>`, or `python tools/<script>.py`, which call the same mains)."""
from __future__ import annotations

import sys

from megactllm.common.command import CommandParser, entry_point, need_path

TOKENIZE = r"""Tokenize a corpus into Megatron indexed datasets ({prefix}_{key}_document.bin/.idx).

Flag names follow Megatron-LM's tools/preprocess_data.py where they exist. Example:

    megactllm tokenize --input examples/data/sample_corpus.jsonl \
        --output-prefix runs/data/sample --tokenizer-type sentencepiece \
        --tokenizer-model runs/tokenizer/sample.model --append-eod --workers 2
"""

INSPECT = """Show a tokenized dataset: document and token counts, a length histogram, decoded samples.

    megactllm inspect-dataset runs/data/sample_text_document --samples 3
The tokenizer is taken from the dataset's .json sidecar unless --tokenizer-model is given.
"""

MERGE = r"""Merge Megatron indexed datasets (same tokenizer/dtype) into one, streaming.

    megactllm merge-datasets --input data/shard_a_text_document data/shard_b_text_document \
        --output-prefix data/all_text_document
    megactllm merge-datasets --input 'data/*_text_document.idx' --output-prefix data/all_text_document
"""

PARALLEL = r"""Turn English-Chinese sentence pairs into training documents, and optionally tokenize them.

Reads `en<TAB>zh` lines (.tsv/.txt) or jsonl pairs ({"en": ..., "zh": ...}), renders each pair
in both directions (or one) with a template, several pairs per document if asked, and writes
them as jsonl {"text": ...}. With --tokenizer-model the documents go through the same pipeline as
`megactllm tokenize` into {output-prefix}_text_document.bin/.idx. Example:

    megactllm preprocess-parallel --input ../shared/data/corpus/news_commentary_en_zh.tsv \
        --output runs/data/parallel.jsonl --pairs-per-document 4 \
        --tokenizer-type sentencepiece --tokenizer-model ../shared/data/tokenizers/map_neo_sp.model \
        --output-prefix runs/data/parallel --append-eod
"""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@entry_point
def tokenize_main(argv=None, prog=None) -> int:
    from megactllm.common.corpus import FORMATS
    from megactllm.data.pretrain.preprocess import PreprocessConfig, preprocess

    p = CommandParser(prog=prog, description=TOKENIZE)
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
    args = p.parse_args(argv)
    need_path(args.tokenizer_model, "--tokenizer-model")
    config = PreprocessConfig(
        input=args.input, output_prefix=args.output_prefix, tokenizer_type=args.tokenizer_type,
        tokenizer_model=args.tokenizer_model, json_keys=args.json_keys, append_eod=args.append_eod,
        workers=args.workers, strict=args.strict, per_shard=args.per_shard, input_format=args.input_format,
        chunk_bytes=args.chunk_mb << 20, log_interval=args.log_interval,
    )
    # PreprocessError, InputError, tokenizer and dataset errors are UserErrors; a bug keeps its traceback.
    summary = preprocess(config, report=None if args.quiet else _stderr)
    print(summary.format())
    return 0


@entry_point
def inspect_main(argv=None, prog=None) -> int:
    import dataclasses
    import json
    import os

    from megactllm.data.pretrain.dataset_stats import dataset_stats, format_stats

    p = CommandParser(prog=prog, description=INSPECT)
    p.add_argument("prefix", help="dataset prefix (or its .bin/.idx path)")
    p.add_argument("--tokenizer-type", default=None)
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--samples", type=int, default=3, help="decoded documents to show")
    p.add_argument("--max-chars", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    args = p.parse_args(argv)
    stats = dataset_stats(args.prefix)  # a missing or damaged dataset is a DatasetFormatError (a UserError)
    if args.json:
        print(json.dumps(dataclasses.asdict(stats), ensure_ascii=False, indent=1))
        return 0
    tokenizer = None
    meta = stats.metadata or {}
    kind = args.tokenizer_type or meta.get("tokenizer_type")
    model = args.tokenizer_model or meta.get("model_path")
    if args.tokenizer_model:
        need_path(args.tokenizer_model, "--tokenizer-model")
    if kind and model and os.path.exists(model):
        from megactllm.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(kind, model)
    elif args.samples:
        _stderr("(no tokenizer found: pass --tokenizer-type/--tokenizer-model to see decoded samples)")
    print(format_stats(stats, tokenizer, args.samples, args.max_chars, args.seed))
    return 0


def _expand(specs) -> list:
    import glob

    from megactllm.data.pretrain.indexed import DatasetFormatError

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


@entry_point
def merge_main(argv=None, prog=None) -> int:
    from megactllm.data.pretrain.indexed import DatasetFormatError, merge_datasets

    p = CommandParser(prog=prog, description=MERGE)
    p.add_argument("--input", nargs="+", required=True, help="dataset prefixes, .bin/.idx paths or globs, in order")
    p.add_argument("--output-prefix", required=True, help="prefix of the merged dataset")
    args = p.parse_args(argv)
    prefixes = _expand(args.input)
    if args.output_prefix in prefixes:
        raise DatasetFormatError(f"--output-prefix {args.output_prefix} is also an input")
    # A missing or damaged input is a DatasetFormatError (a UserError); a bug keeps its traceback.
    merged = merge_datasets(prefixes, args.output_prefix)
    print(f"merged {len(prefixes)} datasets into {args.output_prefix}: {merged.num_documents:,} documents, "
          f"{merged.num_tokens:,} tokens, dtype {merged.dtype}")
    return 0


@entry_point
def parallel_main(argv=None, prog=None) -> int:
    from megactllm.data.pretrain.parallel_corpus import (
        DEFAULT_LANGUAGE_NAMES,
        DEFAULT_TEMPLATE,
        write_parallel_documents,
    )
    from megactllm.data.pretrain.parallel_corpus import ParallelCorpusSettings

    p = CommandParser(prog=prog, description=PARALLEL)
    p.add_argument("--input", required=True, nargs="+", help=".tsv/.txt (en<TAB>zh per line) or .jsonl pair files")
    p.add_argument("--output", required=True, help="jsonl of {\"text\": document} to write")
    p.add_argument("--languages", nargs=2, default=["en", "zh"], metavar=("FIRST", "SECOND"),
                   help="language codes of the first and second .tsv column, and the jsonl keys (default: en zh)")
    p.add_argument("--directions", nargs="+", default=None,
                   help="which renderings to write, e.g. en-zh zh-en (default: both)")
    p.add_argument("--template", default=DEFAULT_TEMPLATE,
                   help="per pair, with {src} {tgt} {src_lang} {tgt_lang}; \\n for newline (default: %(default)r)")
    p.add_argument("--language-names", nargs="*", default=[], metavar="CODE=NAME",
                   help=f"names used for {{src_lang}}/{{tgt_lang}} (default: {DEFAULT_LANGUAGE_NAMES})")
    p.add_argument("--pairs-per-document", type=int, default=1, help="consecutive pairs joined into one document")
    p.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping it")
    g = p.add_argument_group("tokenize the documents (optional; flags as in `megactllm tokenize`)")
    g.add_argument("--tokenizer-type")
    g.add_argument("--tokenizer-model")
    g.add_argument("--output-prefix", help="dataset written to {prefix}_text_document.bin/.idx")
    g.add_argument("--append-eod", action="store_true")
    g.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    names = dict(DEFAULT_LANGUAGE_NAMES)
    for item in args.language_names:
        code, sep, name = item.partition("=")
        if not sep:
            p.error(f"--language-names takes CODE=NAME, got {item!r}")
        names[code] = name
    for path in args.input:
        need_path(path, "--input")
    first, second = args.languages
    config = ParallelCorpusSettings(
        inputs=args.input, output=args.output, languages=(first, second),
        directions=args.directions or [f"{first}-{second}", f"{second}-{first}"],
        template=args.template.replace("\\n", "\n"), language_names=names,
        pairs_per_document=args.pairs_per_document, strict=args.strict,
    )
    tokenize = args.tokenizer_model or args.output_prefix
    if tokenize and not (args.tokenizer_type and args.tokenizer_model and args.output_prefix):
        p.error("tokenizing needs --tokenizer-type, --tokenizer-model and --output-prefix")
    if tokenize:
        need_path(args.tokenizer_model, "--tokenizer-model")
    summary = write_parallel_documents(config, _stderr)
    print(summary.format())
    print(f"documents: {args.output}")
    if not tokenize:
        return 0
    from megactllm.data.pretrain.preprocess import PreprocessConfig, preprocess

    # PreprocessError, InputError, tokenizer and dataset errors are UserErrors; a bug keeps its traceback.
    tokenized = preprocess(
        PreprocessConfig(
            input=[args.output], output_prefix=args.output_prefix, tokenizer_type=args.tokenizer_type,
            tokenizer_model=args.tokenizer_model, append_eod=args.append_eod, workers=args.workers, strict=True,
        ),
        report=_stderr,
    )
    print(tokenized.format())
    return 0
