r"""Train a SentencePiece BPE tokenizer, or extend an existing one's vocabulary.

Train (CT-LLM settings: byte fallback, split digits, <unk>=0 <s>=1 </s>=2 <pad>=3, chat pieces):
    megactllm train-tokenizer train --input examples/data/sample_corpus.jsonl \
        --model-prefix runs/tokenizer/sample --vocab-size 1200

Extend (Linly route: old ids unchanged, each new piece one token, new model beside the old):
    megactllm train-tokenizer extend --model map_neo_sp.model --pieces-file new_words.txt \
        --user-defined '<|im_start|>' '<|im_end|>'
    megactllm train-tokenizer extend --model map_neo_sp.model --from-corpus corpus.jsonl --top-k 2000
Extend a byte-level BPE tokenizer (a directory holding tokenizer.json: Qwen2.5, Llama-3); the output
is a directory AutoTokenizer loads (README section 5):
    megactllm train-tokenizer extend --model hf/qwen2.5-7b --output runs/qwen-zh-tok \
        --from-corpus corpus.jsonl --top-k 2000
(`python tools/train_tokenizer.py ...` is the same command.)
"""
from __future__ import annotations

from megactllm.common.command import CommandParser, entry_point, need_path
from megactllm.tokenizer.train import CHAT_PIECES


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a new SentencePiece BPE model")
    p.add_argument("--input", nargs="+", required=True, help="files, globs or directories (jsonl, txt, parquet; .gz/.zst)")
    p.add_argument("--json-keys", nargs="+", default=["text"])
    p.add_argument("--model-prefix", required=True, help="writes {prefix}.model and {prefix}.vocab")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument("--user-defined", nargs="*", default=list(CHAT_PIECES),
                   help=f"special pieces that encode from text as one token (default: {' '.join(CHAT_PIECES)})")
    p.add_argument("--eod-piece", default="</s>")
    p.add_argument("--pad-piece", default="<pad>")
    p.add_argument("--max-sentences", type=int, default=5_000_000)
    p.add_argument("--threads", type=int, default=None)


def _add_extend(sub) -> None:
    p = sub.add_parser("extend", help="append pieces to a SentencePiece model or a byte-level BPE tokenizer directory")
    p.add_argument("--model", required=True,
                   help="the SentencePiece .model, or a directory holding a byte-level BPE tokenizer.json (left untouched)")
    p.add_argument("--output", default=None,
                   help="default: <model stem>.extended.model beside a SentencePiece model; required for a directory")
    p.add_argument("--method", choices=["merges", "merges-last", "added"], default="merges",
                   help="byte-level BPE only: how words become tokens (README section 5; default merges)")
    p.add_argument("--pieces", nargs="*", default=[], help="Chinese characters or words to add")
    p.add_argument("--pieces-file", default=None, help="a file with one piece per line")
    p.add_argument("--from-corpus", nargs="*", default=[],
                   help="add the most frequent Chinese words (jieba) of these files that are not pieces yet")
    p.add_argument("--top-k", type=int, default=1000)
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--user-defined", nargs="*", default=[], help="special tokens encoded from text, e.g. <|im_start|>")
    p.add_argument("--control", nargs="*", default=[], help="special tokens never produced from text")


def _train(args) -> int:
    from megactllm.tokenizer import load_tokenizer
    from megactllm.tokenizer.train import TokenizerTrainingSettings, train_sentencepiece

    config = TokenizerTrainingSettings(
        input=args.input, model_prefix=args.model_prefix, vocab_size=args.vocab_size, json_keys=args.json_keys,
        character_coverage=args.character_coverage, user_defined=args.user_defined, eod_piece=args.eod_piece,
        pad_piece=args.pad_piece, max_sentences=args.max_sentences,
    )
    if args.threads:
        config.num_threads = args.threads
    path = train_sentencepiece(config)
    tok = load_tokenizer("sentencepiece", path)
    print(f"wrote {path}: {tok.vocab_size:,} pieces, eod={tok.eod_id} bos={tok.bos_id} pad={tok.pad_id}, "
          + ", ".join(f"{p}={tok.token_to_id(p)}" for p in args.user_defined))
    if tok.vocab_size < args.vocab_size:
        print(f"note: the corpus supports only {tok.vocab_size:,} of the {args.vocab_size:,} pieces asked for")
    return 0


def _extend_bpe(args) -> int:
    import os

    from megactllm.tokenizer.extend_bpe import BPEExtensionError, extend_bpe, frequent_new_words, pieces_from_file

    if not args.output:
        raise BPEExtensionError("--output DIR is required when --model is a tokenizer directory")
    pieces = list(args.pieces)
    if args.pieces_file:
        pieces.extend(pieces_from_file(args.pieces_file))
    if args.from_corpus:
        from megactllm.tokenizer.train import iter_training_text

        texts = iter_training_text(args.from_corpus, ["text"], None, 1 << 20)
        mined = frequent_new_words(texts, os.path.join(args.model, "tokenizer.json"), args.top_k, args.min_count)
        print(f"{len(mined)} frequent words from the corpus are not tokens yet: {' '.join(mined[:20])} ...")
        pieces.extend(mined)
    result = extend_bpe(args.model, args.output, pieces, args.user_defined, args.method)
    print(result.format())
    return 0


def _extend(args) -> int:
    import os

    if os.path.isdir(args.model):
        return _extend_bpe(args)
    from megactllm.tokenizer import load_tokenizer
    from megactllm.tokenizer.extend import extend_sentencepiece, frequent_unsplit_words, read_pieces

    need_path(args.model, "--model", "file")
    pieces = list(args.pieces)
    if args.pieces_file:
        pieces.extend(read_pieces(need_path(args.pieces_file, "--pieces-file", "file")))
    if args.from_corpus:
        from megactllm.tokenizer.train import iter_training_text

        texts = iter_training_text(args.from_corpus, ["text"], None, 1 << 20)
        mined = frequent_unsplit_words(texts, load_tokenizer("sentencepiece", args.model), args.top_k, args.min_count)
        print(f"{len(mined)} frequent words from the corpus are not pieces yet: {' '.join(mined[:20])} ...")
        pieces.extend(mined)
    result = extend_sentencepiece(args.model, pieces, args.user_defined, args.control, args.output)
    print(result.format())
    for token_id, piece, kind in result.added[:10]:
        print(f"  {token_id:>7} {piece} ({kind})")
    return 0


@entry_point
def main(argv=None, prog=None) -> int:
    parser = CommandParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_extend(sub)
    args = parser.parse_args(argv)
    # Their user errors are TokenizerFileError, BPEExtensionError, InputError and friends (all
    # UserErrors); anything else is a bug and keeps its traceback.
    return _train(args) if args.command == "train" else _extend(args)
