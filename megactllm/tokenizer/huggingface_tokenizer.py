"""Hugging Face tokenizers: a `tokenizer.json` file, or a model directory that holds one.

Uses the Rust `tokenizers` library directly (fast, no transformers import). A directory's
`tokenizer_config.json` / `special_tokens_map.json`, when present, name the eos/bos/pad tokens;
its `chat_template` (or a `chat_template.jinja` beside it) is kept as `chat_template`.

A special token is only ever one the tokenizer itself marks: named in those files (a name set to
null there means none), else one of the usual spellings among tokenizer.json's added tokens with
`special: true`. Never a plain vocabulary entry spelled like one: Qwen2's byte-level vocabulary
holds an ordinary `<s>` (id 128245) and Qwen has no BOS. Evaluation's prefix, the HF export, GGUF,
chat rendering and dataset metadata all follow from this one answer.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

from tokenizers import Tokenizer as _HFTokenizer

from .base import BOS_CANDIDATES, EOD_CANDIDATES, PAD_CANDIDATES, Tokenizer

UNSET = object()  # a key the tokenizer's files do not name at all (null names "none")


def _token_string(value) -> str | None:
    # tokenizer_config.json stores specials either as "</s>" or as {"content": "</s>", ...}.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def named_special_tokens(model_dir: str) -> dict:
    """{"eos_token"|"bos_token"|"pad_token": token or None} as special_tokens_map.json and
    tokenizer_config.json (which wins) name them; a key set to null is None (Qwen's bos_token), a
    key neither names is absent."""
    named = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            for key in ("eos_token", "bos_token", "pad_token"):
                if key in config:
                    named[key] = _token_string(config[key]) or None
    return named


def resolve_special(named, candidates: Sequence[str], marked: set[str], token_to_id) -> int | None:
    """Id of the token the files name (None where they name none); where they say nothing, of the
    first candidate spelling that the tokenizer marks special (`marked`), never a plain entry."""
    if named is None:
        return None
    if named is not UNSET and token_to_id(named) is not None:
        return token_to_id(named)
    return next((token_to_id(c) for c in candidates if c in marked and token_to_id(c) is not None), None)


class HuggingFaceTokenizer(Tokenizer):
    tokenizer_type = "huggingface"

    def __init__(self, model_path: str) -> None:
        super().__init__(model_path)
        model_dir = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
        json_path = os.path.join(model_path, "tokenizer.json") if os.path.isdir(model_path) else model_path
        if not os.path.isfile(json_path):
            raise FileNotFoundError(
                f"Hugging Face tokenizer {json_path} does not exist (give a tokenizer.json file or a "
                "directory that holds one)"
            )
        try:
            self.hf = _HFTokenizer.from_file(json_path)
        except Exception as exc:  # the Rust side raises a bare Exception on parse errors
            raise ValueError(f"{json_path} is not a Hugging Face tokenizer.json: {exc}") from exc
        named = named_special_tokens(model_dir)
        self._vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
        marked = {t.content for t in self.hf.get_added_tokens_decoder().values() if t.special}
        # EOD is required: a null eos_token still falls back to the marked spellings.
        self._eod = resolve_special(named.get("eos_token") or UNSET, EOD_CANDIDATES, marked, self.token_to_id)
        if self._eod is None:
            raise ValueError(
                f"{json_path} has no end-of-document token (no eos_token named in tokenizer_config.json or "
                f"special_tokens_map.json, and none of {EOD_CANDIDATES} among its special added tokens)"
            )
        self._bos = resolve_special(named.get("bos_token", UNSET), BOS_CANDIDATES, marked, self.token_to_id)
        self._pad = resolve_special(named.get("pad_token", UNSET), PAD_CANDIDATES, marked, self.token_to_id)
        self.chat_template = self._read_chat_template(model_dir)

    @staticmethod
    def _read_chat_template(model_dir: str) -> str | None:
        jinja = os.path.join(model_dir, "chat_template.jinja")
        if os.path.isfile(jinja):
            with open(jinja, encoding="utf-8") as f:
                return f.read()
        path = os.path.join(model_dir, "tokenizer_config.json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            template = json.load(f).get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
            template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
        return template if isinstance(template, str) else None

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def token_to_id(self, piece: str) -> int | None:
        return self.hf.token_to_id(piece)

    def id_to_token(self, token_id: int) -> str:
        piece = self.hf.id_to_token(int(token_id))
        if piece is None:
            raise IndexError(f"id {token_id} is outside the vocabulary of {self.model_path}")
        return piece

    @property
    def eod_id(self) -> int:
        return self._eod

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def pad_id(self) -> int | None:
        return self._pad
