"""Tokenizers behind one small interface (see `base.Tokenizer` for the contract).

    from megactllm.tokenizer import load_tokenizer
    tok = load_tokenizer("sentencepiece", "tokenizer.model")   # or ("huggingface", "dir_or_tokenizer.json")
    ids = tok.encode("你好，世界")            # no BOS/EOS added
    batch = tok.encode_batch(["a", "b"])     # native fast path
    tok.decode(ids); tok.vocab_size; tok.eod_id; tok.bos_id; tok.pad_id
    tok.token_to_id("<|im_start|>")          # None when absent
    tok.id_to_token(2)

Training a SentencePiece model: `megactllm.tokenizer.train.train_sentencepiece`.
Extending an existing model's vocabulary: `megactllm.tokenizer.extend.extend_sentencepiece`.
"""
from __future__ import annotations

from .base import Tokenizer

TOKENIZER_TYPES = ("sentencepiece", "huggingface")

# Spellings users bring from Megatron-LM's --tokenizer-type.
_ALIASES = {
    "sentencepiece": "sentencepiece",
    "sp": "sentencepiece",
    "sentencepiecetokenizer": "sentencepiece",
    "gptsentencepiecetokenizer": "sentencepiece",
    "llama2tokenizer": "sentencepiece",
    "huggingface": "huggingface",
    "hf": "huggingface",
    "huggingfacetokenizer": "huggingface",
}


def load_tokenizer(tokenizer_type: str, model_path: str) -> Tokenizer:
    """The tokenizer of `tokenizer_type` ("sentencepiece" or "huggingface") stored at `model_path`."""
    kind = _ALIASES.get(str(tokenizer_type).lower().replace("-", "").replace("_", ""))
    if kind == "sentencepiece":
        from .sentencepiece_tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer(str(model_path))
    if kind == "huggingface":
        from .huggingface_tokenizer import HuggingFaceTokenizer

        return HuggingFaceTokenizer(str(model_path))
    raise ValueError(f"unknown tokenizer type {tokenizer_type!r}; expected one of {TOKENIZER_TYPES}")


__all__ = ["TOKENIZER_TYPES", "Tokenizer", "load_tokenizer"]
