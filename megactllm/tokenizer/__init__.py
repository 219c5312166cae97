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


def canonical_type(tokenizer_type: str) -> str | None:
    """"sentencepiece" or "huggingface" for any accepted spelling; None for an unknown one."""
    return _ALIASES.get(str(tokenizer_type).lower().replace("-", "").replace("_", ""))


def tokenizer_file(tokenizer_type: str, model_path: str, what: str = "the tokenizer") -> str:
    """The file load_tokenizer reads for model_path: the path itself, or a Hugging Face tokenizer
    directory's tokenizer.json. Raises FileNotFoundError saying precisely what is missing."""
    import os

    path = str(model_path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not os.path.isdir(path):
        return path
    kind = canonical_type(tokenizer_type)
    present = sorted(os.listdir(path))
    listing = ", ".join(present[:8]) + (", ..." if len(present) > 8 else "") if present else "nothing"
    if kind == "huggingface":
        json_path = os.path.join(path, "tokenizer.json")
        if os.path.isfile(json_path):
            return json_path
        raise FileNotFoundError(
            f"{what} {path} is a directory without tokenizer.json (it holds {listing}); a Hugging Face tokenizer "
            "directory holds tokenizer.json, and tokenizer_config.json naming its special tokens"
            + ("; its tokenizer.model is a SentencePiece model: set the tokenizer type to sentencepiece and give "
               "that file" if "tokenizer.model" in present else "")
        )
    hint = ""
    if "tokenizer.model" in present:
        hint = f"; give the file {os.path.join(path, 'tokenizer.model')}"
    elif "tokenizer.json" in present:
        hint = "; it holds tokenizer.json: set the tokenizer type to huggingface"
    raise FileNotFoundError(f"{what} {path} is a directory, but a {tokenizer_type} tokenizer is a file "
                            f"(it holds {listing}){hint}")


def load_tokenizer(tokenizer_type: str, model_path: str) -> Tokenizer:
    """The tokenizer of `tokenizer_type` ("sentencepiece" or "huggingface") stored at `model_path`."""
    kind = canonical_type(tokenizer_type)
    if kind == "sentencepiece":
        from .sentencepiece_tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer(str(model_path))
    if kind == "huggingface":
        from .huggingface_tokenizer import HuggingFaceTokenizer

        return HuggingFaceTokenizer(str(model_path))
    raise ValueError(f"unknown tokenizer type {tokenizer_type!r}; expected one of {TOKENIZER_TYPES}")


__all__ = ["TOKENIZER_TYPES", "Tokenizer", "canonical_type", "load_tokenizer", "tokenizer_file"]
