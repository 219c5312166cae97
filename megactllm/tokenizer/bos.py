"""Whether a model's HF tokenizer adds BOS (and EOS) to every text, as lm-eval and llama.cpp see it.

megactllm's encode never adds BOS (documents end in EOD). A LLaMA-2 or Mistral original does:
`"add_bos_token": true` in its tokenizer_config.json and a TemplateProcessing post-processor in its
tokenizer.json. lm-eval's HFLM encodes with the tokenizer's defaults, so it scores such a model with
BOS first. The import asks transformers what the original adds and records it in the checkpoint's
tokenizer copy (`record_sentencepiece_bos`), so the parallel evaluation backend, the HF export and
GGUF treat the checkpoint as its original. A byte-level BPE tokenizer.json
carries its post-processor itself, and megactllm's HF tokenizer applies it where lm-eval does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from megactllm.errors import UserError

CONFIG = "tokenizer_config.json"


class TokenizerConfigError(UserError, ValueError):
    pass


def read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TokenizerConfigError(f"{path}: unreadable ({err})") from err
    if not isinstance(value, dict):
        raise TokenizerConfigError(f"{path}: expected a JSON object")
    return value


def hf_bos_eos(config_path: Path, tok_config: dict, tok_json: Optional[dict], bpe: bool = False) -> tuple[bool, bool]:
    """(BOS, EOS) an HF tokenizer adds to a text: tokenizer_config.json's add_bos_token and
    add_eos_token where it says (transformers 4 writes them); else the special tokens around the
    text in tokenizer.json's post-processor (transformers 5 keeps them there only; Llama-3's is in a
    Sequence with ByteLevel); else the defaults of transformers' LlamaTokenizer (BOS, no EOS), or
    nothing for a byte-level BPE (Qwen's ByteLevel post-processor adds no token)."""
    post = (tok_json or {}).get("post_processor") or {}
    template = next((p for p in post.get("processors") or [post] if p.get("type") == "TemplateProcessing"), {})
    single = template.get("single")
    if isinstance(single, list) and any("Sequence" in item for item in single):
        at = next(i for i, item in enumerate(single) if "Sequence" in item)
        defaults = {"add_bos_token": any("SpecialToken" in item for item in single[:at]),
                    "add_eos_token": any("SpecialToken" in item for item in single[at + 1:])}
    else:
        defaults = {"add_bos_token": not bpe, "add_eos_token": False}
    values = []
    for key, default in defaults.items():
        value = tok_config.get(key, default)
        if not isinstance(value, bool):
            raise TokenizerConfigError(f"{config_path}: {key} is {value!r}; expected true or false")
        values.append(value)
    return values[0], values[1]


def hf_dir_adds_bos(model_dir: Path) -> Optional[bool]:
    """Whether transformers' tokenizer for model_dir puts BOS before a text (what lm-eval's HFLM
    then scores: transformers 5 follows tokenizer.json's post-processor over tokenizer_config.json's
    add_bos_token, so ask it); None where transformers cannot load one or it has no BOS."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception:  # noqa: BLE001 - no loadable HF tokenizer: nothing to follow
        return None
    if tokenizer.bos_token_id is None:
        return None
    return tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]


def sentencepiece_adds_bos(tokenizer_file: Optional[str | Path]) -> bool:
    """add_bos_token of the tokenizer_config.json beside a SentencePiece model (what the import
    recorded for an HF original); False without one: megactllm's own tokenizers, and checkpoints
    imported before the copy carried it."""
    if tokenizer_file is None:
        return False
    config_path = Path(tokenizer_file).with_name(CONFIG)
    value = (read_json(config_path) or {}).get("add_bos_token", False)
    if not isinstance(value, bool):
        raise TokenizerConfigError(f"{config_path}: add_bos_token is {value!r}; expected true or false")
    return value


def record_sentencepiece_bos(copy_dir: Path, adds_bos: bool) -> None:
    """Write the original's answer into the checkpoint's tokenizer copy (its tokenizer_config.json,
    copied from the original where it had one), so sentencepiece_adds_bos reads it there."""
    from megactllm.common.atomic import write_json_atomic

    config_path = Path(copy_dir) / CONFIG
    config = read_json(config_path) or {}
    config["add_bos_token"] = adds_bos
    write_json_atomic(config_path, config, ensure_ascii=False, indent=2)


def tokenizer_file_adds_bos(tokenizer_type: str, tokenizer_file: Optional[str | Path]) -> bool:
    """Whether the original behind a checkpoint's tokenizer copy puts BOS before a text: for a
    SentencePiece model what the import recorded; for a tokenizer.json what its tokenizer_config.json
    says, else its post-processor (Llama-3's adds <|begin_of_text|>, Qwen's adds nothing). The HF
    export and GGUF follow it, so AutoTokenizer on the export encodes as on the original."""
    if tokenizer_file is None:
        return False
    path = Path(tokenizer_file)
    if tokenizer_type != "huggingface" or path.suffix != ".json":
        return sentencepiece_adds_bos(path)
    config_path = path.with_name(CONFIG)
    tok_json = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    return hf_bos_eos(config_path, read_json(config_path) or {}, tok_json, bpe=True)[0]
