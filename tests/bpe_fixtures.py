"""A byte-level BPE tokenizer in Qwen2's shape, trained here on the real corpus (tests and bench).

Qwen2's tokenizer.json: NFC normalizer, its pre-tokenizer regex (a run of letters, with at most one
leading non-letter, is one pre-token, so a Chinese run stays whole), then byte-level; no unknown
token; <|endoftext|>, <|im_start|>, <|im_end|> as added tokens after the BPE ids. Also one in
Llama-3's shape (its split regex, its special tokens, BOS added by the post-processor).
"""
from __future__ import annotations

import json
from pathlib import Path

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


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


def _train_byte_level_bpe(shared_data: Path, pattern: str, vocab_size: int, max_lines: int | None, normalize: bool,
                          ignore_merges: bool = False):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalize:
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


def build_qwen_style_bpe(shared_data: Path, out_dir: Path, vocab_size: int = 12000, max_lines: int | None = None) -> Path:
    """Trains the tokenizer (on the first max_lines training lines) and writes out_dir/tokenizer.json
    and tokenizer_config.json."""
    tok = _train_byte_level_bpe(shared_data, QWEN2_PATTERN, vocab_size, max_lines, normalize=True)
    tok.add_special_tokens(SPECIALS)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "bos_token": None,
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 32768,
    }, indent=2), encoding="utf-8")
    return out_dir


# Llama-3's tokenizer.json: no normalizer, this split regex (digits in runs of at most three), then
# byte-level; a post-processor that puts <|begin_of_text|> before a text where special tokens are asked for.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
                   "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eom_id|>", "<|eot_id|>"]


def build_llama3_style_bpe(shared_data: Path, out_dir: Path, vocab_size: int = 4000, max_lines: int | None = 600,
                           chat_template: str | None = None, eos_token: str = "<|end_of_text|>") -> Path:
    """A byte-level BPE in Llama-3's shape with its special tokens after the BPE ids (in Llama-3's
    order), and a tokenizer_config.json naming them, with `chat_template` when given."""
    from tokenizers import processors

    # Llama-3's BPE skips the merges for a pre-token already in the vocabulary (ignore_merges).
    tok = _train_byte_level_bpe(shared_data, LLAMA3_PATTERN, vocab_size, max_lines, normalize=False, ignore_merges=True)
    tok.add_special_tokens(LLAMA3_SPECIALS)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"bos_token": "<|begin_of_text|>", "eos_token": eos_token, "tokenizer_class": "PreTrainedTokenizerFast",
              "model_max_length": 131072}
    if chat_template:
        config["chat_template"] = chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out_dir
