"""Write a megactllm tokenizer as Hugging Face tokenizer files that AutoTokenizer loads offline.

SentencePiece models become a LlamaTokenizer: the .model file itself (for slow/sentencepiece
users) plus the tokenizer.json that transformers derives from it (BPE with byte fallback), with
our special tokens and chat template in tokenizer_config.json. User-defined pieces (such as
<|im_start|>) become added tokens, recognised inside text as SentencePiece does.

Known difference from SentencePiece (a limit of HF's Metaspace pre-tokenizer): where a text
*starts* with whitespace or with a user-defined piece, SentencePiece emits one extra "▁" for its
dummy prefix and HF does not. Everything else encodes identically (tests check the real corpus).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from megactllm.convert.errors import ConversionError
from megactllm.tokenizer import load_tokenizer
from megactllm.tokenizer.base import Tokenizer

# Written by transformers' save_pretrained but describing the machine that saved, not the tokenizer.
_VOLATILE_KEYS = ("is_local", "local_files_only", "name_or_path", "_commit_hash")


def _special_tokens(tokenizer: Tokenizer) -> dict:
    specials = {}
    for key, token_id in (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eod_id), ("pad_token", tokenizer.pad_id)):
        if token_id is not None:
            specials[key] = tokenizer.id_to_token(token_id)
    unk = tokenizer.token_to_id("<unk>")
    if unk is not None:
        specials["unk_token"] = "<unk>"
    return specials


def _hf_tokenizer(tokenizer: Tokenizer, source_file: Path, **settings):
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    if tokenizer.tokenizer_type == "sentencepiece":
        if not _adds_dummy_prefix(source_file):
            # A model trained without the dummy "▁" (megactllm's own, see tokenizer/train.py):
            # HF must not add one either, or every text gains a leading token the model never saw.
            settings["add_prefix_space"] = False
        with tempfile.TemporaryDirectory(prefix="megactllm-tok-") as tmp:
            shutil.copy(source_file, Path(tmp) / "tokenizer.model")
            return LlamaTokenizer.from_pretrained(tmp, local_files_only=True, legacy=False, **settings)
    return PreTrainedTokenizerFast(tokenizer_file=str(source_file), **settings)


def _adds_dummy_prefix(model_file: Path) -> bool:
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    return proto.normalizer_spec.add_dummy_prefix


def load_tokenizer_file(tokenizer_type: str, tokenizer_file: str | Path) -> Tokenizer:
    """Our tokenizer from `tokenizer_file`, or the error a conversion gives for a missing one."""
    tokenizer_file = Path(tokenizer_file)
    if not tokenizer_file.is_file():
        raise ConversionError(f"tokenizer file {tokenizer_file} is missing; pass --tokenizer with the model's tokenizer")
    return load_tokenizer(tokenizer_type, str(tokenizer_file))


def export_tokenizer(
    tokenizer_type: str,
    tokenizer_file: str | Path,
    out_dir: str | Path,
    chat_template: Optional[str] = None,
    model_max_length: Optional[int] = None,
    add_bos_token: bool = False,
    tokenizer: Optional[Tokenizer] = None,
) -> Tokenizer:
    """Write tokenizer files into out_dir; returns our tokenizer (for the ids in config.json).

    add_bos_token defaults to False because megactllm's encode adds no BOS (documents end in EOD),
    so HF's `tokenizer(text)` gives the ids the model was trained on. `tokenizer`: the caller's,
    already loaded from tokenizer_file (else it is loaded here).
    """
    tokenizer_file = Path(tokenizer_file)
    ours = tokenizer if tokenizer is not None else load_tokenizer_file(tokenizer_type, tokenizer_file)
    out_dir = Path(out_dir)
    specials = _special_tokens(ours)
    settings = dict(specials, add_bos_token=add_bos_token, add_eos_token=False)
    if chat_template:
        settings["chat_template"] = chat_template
    if model_max_length:
        settings["model_max_length"] = model_max_length
    _hf_tokenizer(ours, tokenizer_file, **settings).save_pretrained(str(out_dir))
    if ours.tokenizer_type == "sentencepiece":
        shutil.copy(tokenizer_file, out_dir / "tokenizer.model")
    _tidy_config(out_dir / "tokenizer_config.json", add_bos_token, specials)
    return ours


def _tidy_config(path: Path, add_bos_token: bool, specials: dict) -> None:
    """Drop machine-specific keys; state BOS/EOS behaviour and special tokens explicitly."""
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in _VOLATILE_KEYS:
        config.pop(key, None)
    config.update(specials)
    # transformers 5 repeats the named specials here as a list; transformers 4 expects a mapping
    # and fails on a list, and the named keys already say everything.
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list) and set(extra) <= set(specials.values()):
        del config["extra_special_tokens"]
    config["add_bos_token"] = add_bos_token
    config["add_eos_token"] = False
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
