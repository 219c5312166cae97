"""Character statistics of a text. Pure functions; the rules in doc_rules.py compare them
with thresholds. Chinese has no spaces, so n-grams here are character n-grams."""
from __future__ import annotations

import math
import re
from collections import Counter

# Punctuation a sentence or line can end with, Chinese and ASCII.
TERMINAL_PUNCT = frozenset("。！？!?.…\"'”’」』》)）;；~～")
PUNCT = frozenset("，。、；：？！…—·“”‘’「」『』《》（）【】〔〕〈〉,.;:?!'\"()[]{}<>-_/\\@#$%^&*+=|~`")
SENTENCE_END_RE = re.compile(r"[。！？!?；;…]+|\.(?=\s|$)|\n+")
_WS_RE = re.compile(r"\s+")


HAN_CLASS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_HAN_RE = re.compile(f"[{HAN_CLASS}]")
_DIGIT_RE = re.compile(r"\d")


def han_count(text: str) -> int:
    return len(_HAN_RE.findall(text))


def han_ratio(text: str) -> float:
    """Han characters over non-space characters."""
    chars = _WS_RE.sub("", text)
    return han_count(chars) / len(chars) if chars else 0.0


def sentence_count(text: str) -> int:
    return sum(1 for part in SENTENCE_END_RE.split(text) if part.strip())


def bracket_ratio(text: str) -> float:
    """Share of characters inside 【...】 (title/ad markers on Chinese pages), brackets included."""
    if not text or "【" not in text:
        return 0.0
    inside, depth = 0, 0
    for c in text:
        if c == "【":
            depth += 1
        if depth:
            inside += 1
        if c == "】" and depth:
            depth -= 1
    return inside / len(text)


def digit_ratio(text: str) -> float:
    return len(_DIGIT_RE.findall(text)) / len(text) if text else 0.0


def has_punctuation(text: str) -> bool:
    return any(c in PUNCT for c in text)


def unique_char_ratio(text: str) -> float:
    chars = _WS_RE.sub("", text)
    return len(set(chars)) / len(chars) if chars else 0.0


def char_entropy(text: str) -> float:
    """Shannon entropy of the character unigram distribution, in bits. (In nats, ordinary
    English letters (~2.9) would fall under the threshold of 3 that is meant for junk.)"""
    chars = _WS_RE.sub("", text)
    if not chars:
        return 0.0
    n = len(chars)
    return -sum(c / n * math.log2(c / n) for c in Counter(chars).values())


def top_ngram_coverage(text: str, n: int) -> float:
    """Share of characters inside occurrences of the most frequent character n-gram
    (Gopher's rule, on characters; overlapping occurrences count their characters once)."""
    chars = _WS_RE.sub("", text)
    if len(chars) < n:
        return 0.0
    grams = [chars[i:i + n] for i in range(len(chars) - n + 1)]
    top = Counter(grams).most_common(1)[0][0]
    return _covered(grams, lambda g: g == top, n) / len(chars)


def _covered(grams: list[str], selected, n: int) -> int:
    """Characters inside the union of the selected n-grams' spans (overlaps counted once)."""
    covered, end = 0, 0
    for i, g in enumerate(grams):
        if selected(g):
            covered += i + n - max(i, end)
            end = i + n
    return covered


def dup_ngram_coverage(text: str, n: int) -> float:
    """Share of characters inside character n-grams that occur more than once."""
    chars = _WS_RE.sub("", text)
    total = len(chars)
    if total < n:
        return 0.0
    grams = [chars[i:i + n] for i in range(total - n + 1)]
    counts = Counter(grams)
    return _covered(grams, lambda g: counts[g] > 1, n) / total


def ngram_coverages(text: str, ns: list[int]) -> dict[int, tuple[float, float]]:
    """{n: (top_ngram_coverage, dup_ngram_coverage)} in one C++ pass per n; the functions
    above are the readable reference the tests hold it to."""
    from .minhash import native

    chars = _WS_RE.sub("", text)
    return dict(zip(ns, native().ngram_coverage(chars, list(ns))))
