"""Word segmentation for the word-based rules: jieba's dictionary and method (maximum
probability path, no HMM), run by the C++ segmenter in csrc/minhash.cpp.

tests/test_clean_rules.py holds it to `jieba.lcut(text, HMM=False)` token for token.
"""
from __future__ import annotations

import logging
import re
from functools import lru_cache
from megactllm.common.optional import require

_WORD_CHAR_RE = re.compile(r"[^\W_]")  # a letter, digit or Han character


@lru_cache(maxsize=1)
def _jieba():
    jieba = require("jieba", "Chinese word segmentation")

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


@lru_cache(maxsize=1)
def _segmenter():
    from .minhash import native

    dt = _jieba().dt
    return native().Segmenter(dt.FREQ, float(dt.total))


def tokens(text: str) -> list[str]:
    """All tokens, as jieba.lcut(text, HMM=False) gives them, but whitespace runs may differ."""
    out, start = [], 0
    for end in _segmenter().cut(text):
        out.append(text[start:end])
        start = end
    return out


def words(text: str) -> list[str]:
    """Words of text: tokens holding a letter, digit or Han character (no spaces or punctuation).

    HMM discovery of unknown words is off, as it is several times slower and only changes how
    unseen names are split, which matters little for length and count thresholds.
    """
    return [w for w in tokens(text) if _WORD_CHAR_RE.search(w)]
