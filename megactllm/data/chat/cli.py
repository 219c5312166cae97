"""The chat-data commands: preprocess-sft and preprocess-dpo (`megactllm <command>`, or
`python tools/preprocess_{sft,dpo}.py`, which call the same mains)."""
from __future__ import annotations

import sys

from megactllm.common.command import CommandParser, entry_point, need_path, user_errors
from megactllm.errors import UserError

SFT = r"""Tokenize instruction data (alpaca or conversation records, json/jsonl) with the megactllm chat
template into an indexed SFT dataset that carries the loss mask (assistant tokens only).

One output per language or source, mixed at training time by ratio in the recipe, e.g.
`data.train_data_path: ["4", "data/sft_zh", "1", "data/sft_en"]` for zh:en = 4:1:

    megactllm preprocess-sft --input ../shared/data/sft/alpaca_zh_demo.json \
        --output-prefix data/sft_zh --language zh --seq-length 512 \
        --tokenizer-type sentencepiece --tokenizer-model tokenizer/chat.model

Samples keep at most seq_length + 1 tokens (cut from the right); a sample left without any
assistant token is dropped. Both are counted, and bad records are reported with file:record.
"""

DPO = r"""Tokenize preference pairs (prompt or conversation + chosen + rejected, json/jsonl) with the
megactllm chat template into an indexed DPO dataset; each pair is one sample holding both halves.

    megactllm preprocess-dpo --input ../shared/data/dpo/dpo_zh_demo.json \
        --output-prefix data/dpo_zh --language zh --seq-length 512 \
        --tokenizer-type sentencepiece --tokenizer-model tokenizer/chat.model

Each half keeps at most seq_length + 1 tokens: a long prompt is cut from the left to at most half
of that, then responses from the right; both halves keep the same prompt. Cuts and bad records
(with file:record) are counted and reported.
"""


def _parser(prog, description: str, half: str) -> CommandParser:
    p = CommandParser(prog=prog, description=description)
    p.add_argument("--input", required=True, nargs="+", help=".json (array) / .jsonl files, or directories of them")
    p.add_argument("--output-prefix", required=True, help="writes {prefix}.bin/.idx/.json")
    p.add_argument("--tokenizer-type", default="sentencepiece")
    p.add_argument("--tokenizer-model", required=True, help="a tokenizer with a chat format: <|im_start|>/<|im_end|> (ChatML) or Llama-3's header tokens")
    p.add_argument("--seq-length", type=int, required=True,
                   help=f"training sequence length ({half} keeps seq_length + 1 tokens)")
    p.add_argument("--language", default=None, help="tag stored in the sidecar (zh, en, ...)")
    p.add_argument("--max-bad-fraction", type=float, default=0.5,
                   help="fail when more than this share of records is unusable (default 0.5)")
    return p


def _run(argv, prog, kind: str) -> int:
    from megactllm.tokenizer import load_tokenizer

    args = _parser(prog, SFT if kind == "sft" else DPO, "a sample" if kind == "sft" else "each half").parse_args(argv)
    for path in args.input:
        need_path(path, "--input")
    tokenizer = load_tokenizer(args.tokenizer_type, need_path(args.tokenizer_model, "--tokenizer-model"))
    # Record and chat-template errors are UserErrors: they end in one line naming file:record.
    with user_errors(FileNotFoundError):
        if kind == "sft":
            from megactllm.data.chat.sft_preprocess import preprocess_sft

            report = preprocess_sft(args.input, args.output_prefix, tokenizer, args.seq_length, args.language,
                                    progress=lambda n: print(f"  {n} records", file=sys.stderr, flush=True))
        else:
            from megactllm.data.chat.dpo_preprocess import preprocess_dpo

            report = preprocess_dpo(args.input, args.output_prefix, tokenizer, args.seq_length, args.language)
    print(report.text(args.output_prefix))
    if report.records and report.bad.total > args.max_bad_fraction * report.records:
        raise UserError(f"{report.bad.total} of {report.records} records are bad; is this the right input format?")
    return 0


@entry_point
def sft_main(argv=None, prog=None) -> int:
    return _run(argv, prog, "sft")


@entry_point
def dpo_main(argv=None, prog=None) -> int:
    return _run(argv, prog, "dpo")
