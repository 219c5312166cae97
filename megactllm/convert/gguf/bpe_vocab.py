"""A byte-level BPE tokenizer.json (Qwen2/2.5/3, Llama-3, megactllm's BPE extension) as GGUF's
"gpt2" tokenizer fields.

llama.cpp runs byte-level BPE itself: it splits text with a pre-tokenizer regex it knows by name
(`tokenizer.ggml.pre`), maps bytes to GPT-2's unicode alphabet and applies the merges by rank. So
the file carries the tokens in id order (byte-level strings, as tokenizer.json has them; added
tokens as their plain text), their types (added special tokens control, other added tokens
user-defined: llama.cpp cuts both out of the text as the HF tokenizer does), the merges in rank
order, and the name of the pre-tokenizer. The regex is not in the file: a tokenizer.json whose
pre-tokenizer is none llama.cpp knows is refused by name rather than exported to tokenize
differently. The HF tokenizer's NFC normalizer (Qwen2's) is not run by llama.cpp; text already in
NFC (nearly all text) tokenizes the same.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from megactllm.convert.errors import ConversionError
from megactllm.convert.gguf.vocab import CONTROL, NORMAL, USER_DEFINED, GGUFVocab
from megactllm.tokenizer.base import BOS_CANDIDATES, EOD_CANDIDATES, PAD_CANDIDATES
from megactllm.tokenizer.chat_template import IM_END, IM_START
from megactllm.tokenizer.huggingface_tokenizer import UNSET, resolve_special

# The split regexes of the families llama.cpp names, as their tokenizer.json files write them,
# with what llama.cpp's BPE does for that name (ignore_merges: a pre-token already in the
# vocabulary is one token, as Llama-3's tokenizer.json says).
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
          r"\s+(?!\S)|\s+")
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {_QWEN2: ("qwen2", False), _LLAMA3: ("llama-bpe", True)}
_NORMALIZERS = (None, "NFC")  # NFC: see the module note
EOT_CANDIDATES = (IM_END, "<|eot_id|>")


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path} is missing: GGUF export needs the model's {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path} is not valid JSON ({e})") from None


def _pre_tokenizer(path: Path, data: dict) -> str:
    """llama.cpp's name for the pre-tokenizer: a Split on a regex it knows, then ByteLevel without
    GPT-2's own regex (use_regex false)."""
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps or []]
    if kinds != ["Split", "ByteLevel"]:
        raise ConversionError(
            f"{path}: pre_tokenizer is {kinds or pre.get('type')}; GGUF export knows a Split regex followed by "
            "ByteLevel (Qwen2, Llama-3), which llama.cpp names"
        )
    split, byte_level = steps
    pattern = (split.get("pattern") or {}).get("Regex")
    if pattern not in PRE_TOKENIZERS or split.get("behavior") != "Isolated" or split.get("invert"):
        raise ConversionError(
            f"{path}: pre-tokenizer regex {pattern!r} is neither Qwen2's nor Llama-3's; llama.cpp would split the "
            "text with another regex and tokenize differently, so it is not exported"
        )
    if byte_level.get("use_regex", True) or byte_level.get("add_prefix_space"):
        raise ConversionError(f"{path}: the ByteLevel pre-tokenizer must have use_regex and add_prefix_space false "
                              "(llama.cpp applies only the Split regex)")
    name, ignore_merges = PRE_TOKENIZERS[pattern]
    model = data["model"]
    if bool(model.get("ignore_merges")) != ignore_merges:
        raise ConversionError(f"{path}: model.ignore_merges is {bool(model.get('ignore_merges'))}, but llama.cpp's "
                              f"{name!r} pre-tokenizer runs with ignore_merges {ignore_merges}")
    return name


def _check_model(path: Path, data: dict) -> None:
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ConversionError(f"{path}: tokenizer model is {model.get('type')!r}; the GGUF gpt2 tokenizer is byte-level BPE")
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            raise ConversionError(f"{path}: model.{key} is {model[key]!r}; llama.cpp's byte-level BPE has none")
    if model.get("byte_fallback"):
        raise ConversionError(f"{path}: model.byte_fallback is set: a SentencePiece model's BPE, not byte-level; "
                              "GGUF export needs that model's tokenizer.model (pass --tokenizer)")
    normalizer = (data.get("normalizer") or {}).get("type")
    if normalizer not in _NORMALIZERS:
        raise ConversionError(f"{path}: normalizer {normalizer!r}; llama.cpp does not normalize, so its tokens "
                              "would differ from the HF tokenizer's")
    if (data.get("decoder") or {}).get("type") != "ByteLevel":
        raise ConversionError(f"{path}: decoder is {(data.get('decoder') or {}).get('type')!r}, not ByteLevel")


def _merges(model: dict) -> list[str]:
    """Merges as "left right" strings in rank order (tokenizers writes either form)."""
    return [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in model.get("merges", [])]


def _named(config: dict, key: str) -> Optional[str]:
    value = config.get(key)
    return value.get("content") if isinstance(value, dict) else value


def read_bpe_vocab(tokenizer_json: str | Path, tokenizer_config: Optional[dict] = None) -> GGUFVocab:
    """The GGUF vocabulary of a byte-level BPE tokenizer.json; tokenizer_config (the model
    directory's tokenizer_config.json, where there is one) names its bos/eos/pad tokens."""
    path = Path(tokenizer_json)
    data = _read_json(path, "tokenizer.json")
    config = tokenizer_config or {}
    _check_model(path, data)
    pre = _pre_tokenizer(path, data)
    by_id: dict[int, tuple[str, int]] = {i: (t, NORMAL) for t, i in data["model"]["vocab"].items()}
    for added in data.get("added_tokens", []):
        by_id[int(added["id"])] = (added["content"], CONTROL if added.get("special") else USER_DEFINED)
    size = max(by_id) + 1 if by_id else 0
    gaps = [i for i in range(size) if i not in by_id]
    if gaps:
        raise ConversionError(f"{path}: ids {gaps[:5]} have no token ({len(gaps)} gaps); GGUF needs ids 0..{size - 1}")
    tokens = [by_id[i][0] for i in range(size)]
    types = [by_id[i][1] for i in range(size)]
    ids = {t: i for i, t in enumerate(tokens)}
    if len(ids) != size:
        raise ConversionError(f"{path}: {size - len(ids)} tokens appear under two ids")

    def find(*names: Optional[str]) -> Optional[int]:
        return next((ids[n] for n in names if n and n in ids), None)

    # The same answer as megactllm's tokenizer gives (tokenizer/huggingface_tokenizer.py): only
    # tokens the tokenizer names or marks special; Qwen's plain "<s>" is no BOS.
    marked = {t["content"] for t in data.get("added_tokens", []) if t.get("special")}

    def named(key: str):
        return (_named(config, key) or None) if key in config else UNSET

    bos = resolve_special(named("bos_token"), BOS_CANDIDATES, marked, ids.get)
    eos = resolve_special(named("eos_token") or UNSET, EOD_CANDIDATES, marked, ids.get)
    if eos is None:
        raise ConversionError(f"{path}: no end-of-text token (no eos_token in tokenizer_config.json, none of "
                              f"{EOD_CANDIDATES} among its special added tokens)")
    pad = resolve_special(named("pad_token"), PAD_CANDIDATES, marked, ids.get)
    eot = find(IM_END) if find(IM_START) is not None else find("<|eot_id|>")
    return GGUFVocab(tokens, [], types, bos, eos, None, pad, eot, False, model="gpt2", pre=pre,
                     merges=_merges(data["model"]))
