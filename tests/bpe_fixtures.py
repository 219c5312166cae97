"""A byte-level BPE tokenizer in Qwen2's shape, trained here on the real corpus (tests and bench).

Qwen2's tokenizer.json: NFC normalizer, its pre-tokenizer regex (a run of letters, with at most one
leading non-letter, is one pre-token, so a Chinese run stays whole), then byte-level; no unknown
token; <|endoftext|>, <|im_start|>, <|im_end|> as added tokens after the BPE ids.
"""
from __future__ import annotations

import json
from pathlib import Path

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Llama-3's: digits in runs of up to three; its BPE skips merges for a pre-token already in the vocabulary.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def corpus_lines(shared_data: Path, part: str) -> list[str]:
    """'train': the first half of CLUECorpusSmall, English C4 and news commentary (both languages);
    'heldout': the second half of CLUECorpusSmall (Chinese text the tokenizer never saw)."""
    zh = [line.strip() for line in (shared_data / "corpus" / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines()]
    zh = [line for line in zh if line]
    if part == "heldout":
        return zh[len(zh) // 2:]
    en = [json.loads(line)["text"] for line in (shared_data / "corpus" / "c4_demo_en.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = (shared_data / "corpus" / "news_commentary_en_zh.tsv").read_text(encoding="utf-8").splitlines()
    return zh[: len(zh) // 2] + en + [p for line in pairs for p in line.split("\t")]


def _train_byte_level(shared_data: Path, pattern: str, vocab_size: int, max_lines: int | None, llama3: bool = False):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=llama3))
    if not llama3:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    lines = corpus_lines(shared_data, "train")
    tok.train_from_iterator(lines[:max_lines] if max_lines else lines, trainer)
    return tok


def build_llama3_style_bpe(shared_data: Path, out_dir: Path, vocab_size: int = 4000, max_lines: int | None = 600) -> Path:
    """Llama-3's shape: its regex, ignore_merges, no normalizer, <|begin_of_text|> put before every
    text by the post-processor (a Sequence with ByteLevel, as Llama-3.x ships it)."""
    from tokenizers import processors

    tok = _train_byte_level(shared_data, LLAMA3_PATTERN, vocab_size, max_lines, llama3=True)
    tok.add_special_tokens(LLAMA3_SPECIALS)
    bos = LLAMA3_SPECIALS[0]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, tok.token_to_id(bos))]),
    ])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": bos, "eos_token": "<|end_of_text|>", "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 131072,
    }, indent=2), encoding="utf-8")
    return out_dir


def build_qwen_style_bpe(shared_data: Path, out_dir: Path, vocab_size: int = 12000, max_lines: int | None = None) -> Path:
    """Trains the tokenizer (on the first max_lines training lines) and writes out_dir/tokenizer.json
    and tokenizer_config.json."""
    tok = _train_byte_level(shared_data, QWEN2_PATTERN, vocab_size, max_lines)
    tok.add_special_tokens(SPECIALS)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "bos_token": None,
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 32768,
    }, indent=2), encoding="utf-8")
    return out_dir
