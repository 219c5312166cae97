"""Hugging Face tokenizers: a `tokenizer.json` file, or a model directory that holds one.

Uses the Rust `tokenizers` library directly (fast, no transformers import). A directory's
`tokenizer_config.json` / `special_tokens_map.json`, when present, name the eos/bos/pad tokens;
its `chat_template` (or a `chat_template.jinja` beside it) is kept as `chat_template`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

from tokenizers import Tokenizer as _HFTokenizer

from .base import BOS_CANDIDATES, EOD_CANDIDATES, PAD_CANDIDATES, Tokenizer, first_known


def _token_string(value) -> str | None:
    # tokenizer_config.json stores specials either as "</s>" or as {"content": "</s>", ...}.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


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
        named = self._named_specials(model_dir)
        self._vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
        self._eod = self._resolve(named.get("eos_token"), EOD_CANDIDATES)
        if self._eod is None:
            raise ValueError(
                f"{json_path} has no end-of-document token (no eos_token in tokenizer_config.json and none of "
                f"{EOD_CANDIDATES} in the vocabulary)"
            )
        self._bos = self._resolve(named.get("bos_token"), BOS_CANDIDATES)
        self._pad = self._resolve(named.get("pad_token"), PAD_CANDIDATES)
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

    @staticmethod
    def _named_specials(model_dir: str) -> dict:
        named = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            path = os.path.join(model_dir, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    config = json.load(f)
                for key in ("eos_token", "bos_token", "pad_token"):
                    token = _token_string(config.get(key))
                    if token:
                        named[key] = token
        return named

    def _resolve(self, named: str | None, candidates: Sequence[str]) -> int | None:
        if named is not None and self.token_to_id(named) is not None:
            return self.token_to_id(named)
        return first_known(self, candidates)

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
