"""What an extended tokenizer must do, measured against the original on real text.

Each function takes `tokenizers.Tokenizer` objects (old and new) and texts, and returns a figure
or the counter-examples, so tests assert on them and bench/bpe_extension.py prints them.
"""
from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass


def changed_ids(old, new) -> list[int]:
    """Old ids whose token text differs in the new tokenizer (an extension has none)."""
    return [i for i in range(old.get_vocab_size(with_added_tokens=True)) if old.id_to_token(i) != new.id_to_token(i)]


def changed_texts(old, new, texts: Sequence[str]) -> list[str]:
    """Texts the new tokenizer encodes to other ids than the old one."""
    before = old.encode_batch(list(texts), add_special_tokens=False)
    after = new.encode_batch(list(texts), add_special_tokens=False)
    return [t for t, a, b in zip(texts, before, after) if a.ids != b.ids]


def round_trip_failures(tokenizer, texts: Sequence[str]) -> list[str]:
    """Texts that do not decode back to themselves."""
    encoded = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return [t for t, e in zip(texts, encoded) if tokenizer.decode(e.ids, skip_special_tokens=False) != t]


@dataclass
class WordHits:
    occurrences: int
    single_token: int
    misses: dict  # word -> occurrences not encoded as its one token

    @property
    def rate(self) -> float:
        return self.single_token / self.occurrences if self.occurrences else float("nan")


def single_token_rate(tokenizer, words: Sequence[str], texts: Sequence[str]) -> WordHits:
    """Of the occurrences of `words` in `texts` (longest word first, not overlapping), the share that
    the tokenizer encodes as exactly one token spanning the occurrence (by character offsets)."""
    if not words:
        return WordHits(0, 0, {})
    pattern = re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)))
    encoded = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    hits = WordHits(0, 0, {})
    for text, enc in zip(texts, encoded):
        spans = set(enc.offsets)
        for m in pattern.finditer(text):
            hits.occurrences += 1
            if (m.start(), m.end()) in spans:
                hits.single_token += 1
            else:
                hits.misses[m.group()] = hits.misses.get(m.group(), 0) + 1
    return hits


def chinese_chars(text: str) -> int:
    return sum(1 for c in text if "\u4e00" <= c <= "\u9fff")


def tokens_per_char(tokenizer, texts: Sequence[str]) -> float:
    """Tokens per Chinese character over the texts."""
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False))
    return tokens / max(1, sum(chinese_chars(t) for t in texts))


def encode_throughputs(tokenizers: Sequence, texts: Sequence[str], repeats: int = 5) -> list[float]:
    """Characters per second of each tokenizer on one thread, best of `repeats`, run interleaved so
    that the machine's load falls on all alike."""
    texts = list(texts)
    chars = sum(len(t) for t in texts)
    best = [float("inf")] * len(tokenizers)
    for _ in range(repeats):
        for i, tok in enumerate(tokenizers):
            start = time.perf_counter()
            for text in texts:
                tok.encode(text, add_special_tokens=False)
            best[i] = min(best[i], time.perf_counter() - start)
    return [chars / b for b in best]
