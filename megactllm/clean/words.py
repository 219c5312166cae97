"""jieba word segmentation, loaded once per process and quiet."""
from __future__ import annotations

import logging
from functools import lru_cache


@lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def words(text: str) -> list[str]:
    """jieba words of text, without whitespace and punctuation-only tokens.

    HMM discovery of unknown words is off: it is several times slower and only changes how
    unseen names are split, which matters little for length and count thresholds.
    """
    return [w for w in _jieba().lcut(text, HMM=False) if any(c.isalnum() for c in w)]
