#!/usr/bin/env python
r"""Turn English-Chinese sentence pairs into training documents, and optionally tokenize them.

Reads `en<TAB>zh` lines (.tsv/.txt) or jsonl pairs ({"en": ..., "zh": ...}), renders each pair
in both directions (or one) with a template, several pairs per document if asked, and writes
them as jsonl {"text": ...}. With --tokenizer-model the documents go through the same pipeline as
tools/preprocess_data.py into {output-prefix}_text_document.bin/.idx. Example:

    python tools/preprocess_parallel.py --input ../shared/data/corpus/news_commentary_en_zh.tsv \
        --output runs/data/parallel.jsonl --pairs-per-document 4 \
        --tokenizer-type sentencepiece --tokenizer-model ../shared/data/tokenizers/map_neo_sp.model \
        --output-prefix runs/data/parallel --append-eod
"""
import argparse
import sys

from megactllm.data.pretrain.parallel_corpus import (
    DEFAULT_LANGUAGE_NAMES,
    DEFAULT_TEMPLATE,
    ParallelCorpusSettings,
    ParallelCorpusError,
    write_parallel_documents,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    g = p.add_argument_group("tokenize the documents (optional; flags as in tools/preprocess_data.py)")
    g.add_argument("--tokenizer-type")
    g.add_argument("--tokenizer-model")
    g.add_argument("--output-prefix", help="dataset written to {prefix}_text_document.bin/.idx")
    g.add_argument("--append-eod", action="store_true")
    g.add_argument("--workers", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = dict(DEFAULT_LANGUAGE_NAMES)
    for item in args.language_names:
        code, sep, name = item.partition("=")
        if not sep:
            print(f"error: --language-names takes CODE=NAME, got {item!r}", file=sys.stderr)
            return 1
        names[code] = name
    first, second = args.languages
    config = ParallelCorpusSettings(
        inputs=args.input,
        output=args.output,
        languages=(first, second),
        directions=args.directions or [f"{first}-{second}", f"{second}-{first}"],
        template=args.template.replace("\\n", "\n"),
        language_names=names,
        pairs_per_document=args.pairs_per_document,
        strict=args.strict,
    )
    tokenize = args.tokenizer_model or args.output_prefix
    if tokenize and not (args.tokenizer_type and args.tokenizer_model and args.output_prefix):
        print("error: tokenizing needs --tokenizer-type, --tokenizer-model and --output-prefix", file=sys.stderr)
        return 1
    report = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        summary = write_parallel_documents(config, report)
    except ParallelCorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary.format())
    print(f"documents: {args.output}")
    if not tokenize:
        return 0
    from megactllm.data.pretrain.preprocess import PreprocessConfig, PreprocessError, preprocess
    from megactllm.common.corpus import InputError

    try:
        tokenized = preprocess(
            PreprocessConfig(
                input=[args.output], output_prefix=args.output_prefix, tokenizer_type=args.tokenizer_type,
                tokenizer_model=args.tokenizer_model, append_eod=args.append_eod, workers=args.workers, strict=True,
            ),
            report=report,
        )
    except (PreprocessError, InputError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(tokenized.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
