"""Document rules. Each returns the measured value when the document fails, None when it passes.

Page rules judge the page as crawled (after normalisation, before line removal): they detect
boilerplate pages by their line structure. Content rules judge the text that line removal
left. Rules run cheapest first and a document is tagged with the first rule it fails.
"""
from __future__ import annotations

from typing import Callable

from . import textstats as ts
from .config import FilterConfig
from .lang import detect
from .wordlists import UrlBlacklist
from .words import words as segment_words

READMORE_ENDINGS = ("readmore", "read more", "展开", "更多", "。。。", "...", "…", "全文")
BULLETS = tuple("•●○■□▪▫◆◇◦►▶▸➢➤✓✔-*·–—")


def readmore_line_ratio(lines: list[str]) -> float:
    return sum(1 for line in lines if line.lower().endswith(READMORE_ENDINGS)) / len(lines) if lines else 0.0


def bullet_line_ratio(lines: list[str]) -> float:
    return sum(1 for line in lines if line.startswith(BULLETS)) / len(lines) if lines else 0.0


class DocumentFilter:
    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg
        self.blacklist = UrlBlacklist(cfg.url_blacklist, cfg.url_blacklist_categories) if cfg.url_blacklist else None

    def page_failure(self, text: str, url: str | None) -> tuple[str, object] | None:
        c = self.cfg
        if self.blacklist is not None and self.blacklist.blocked(url):
            return "url_blacklist", url
        if c.max_bracket_ratio is not None and (v := ts.bracket_ratio(text)) > c.max_bracket_ratio:
            return "bracket_ratio", v
        lines = [line.strip() for line in text.split("\n") if line.strip()]
        if c.max_readmore_line_ratio is not None and (v := readmore_line_ratio(lines)) > c.max_readmore_line_ratio:
            return "readmore_lines", v
        if c.max_bullet_line_ratio is not None and (v := bullet_line_ratio(lines)) > c.max_bullet_line_ratio:
            return "bullet_lines", v
        return None

    def content_failure(self, text: str) -> tuple[str, object] | None:
        c = self.cfg
        n = len(text)
        if c.min_chars is not None and n < c.min_chars:
            return "too_short", n
        if c.max_chars is not None and n > c.max_chars:
            return "too_long", n
        if c.require_punctuation and not ts.has_punctuation(text):
            return "no_punctuation", 0
        if c.min_sentences is not None and (v := ts.sentence_count(text)) < c.min_sentences:
            return "min_sentences", v
        if c.max_digit_ratio is not None and (v := ts.digit_ratio(text)) > c.max_digit_ratio:
            return "digit_ratio", v
        if c.min_zh_char_ratio is not None and (v := ts.han_ratio(text)) < c.min_zh_char_ratio:
            return "zh_char_ratio", v
        if c.languages is not None:
            lang, score = detect(text)
            if lang not in c.languages or score < c.min_language_score:
                return "language", f"{lang}:{score:.2f}"
        if c.min_unique_char_ratio is not None and (v := ts.unique_char_ratio(text)) <= c.min_unique_char_ratio:
            return "unique_char_ratio", v
        if c.min_char_entropy is not None and (v := ts.char_entropy(text)) < c.min_char_entropy:
            return "char_entropy", v
        failure = self._repetition_failure(text)
        if failure is not None:
            return failure
        return self._word_failure(text)

    def _repetition_failure(self, text: str) -> tuple[str, object] | None:
        top, dup = self.cfg.max_top_ngram_coverage or {}, self.cfg.max_dup_ngram_coverage or {}
        if not (top or dup):
            return None
        dup_ns = sorted(dup)
        cov = ts.ngram_coverages(text, sorted(set(top) | set(dup_ns[:1])))
        for ngram, limit in sorted(top.items()):
            if cov[ngram][0] > limit:
                return f"top_{ngram}gram_coverage", cov[ngram][0]
        for i, ngram in enumerate(dup_ns):
            if ngram not in cov:
                cov.update(ts.ngram_coverages(text, [ngram]))
            if cov[ngram][1] > dup[ngram]:
                return f"dup_{ngram}gram_coverage", cov[ngram][1]
            # Duplicated coverage only shrinks as n grows (a repeated (n+1)-gram is made of
            # repeated n-grams), so under every remaining limit means all the rest pass.
            if cov[ngram][1] <= min(dup[m] for m in dup_ns[i:]):
                return None
        return None

    def _word_failure(self, text: str) -> tuple[str, object] | None:
        c = self.cfg
        checks: list[tuple[str, float | None, float | None, Callable[[list[str]], float]]] = [
            ("mean_word_length", c.min_mean_word_length, c.max_mean_word_length,
             lambda ws: sum(map(len, ws)) / len(ws) if ws else 0.0),
            ("hash_ratio", None, c.max_hash_ratio, lambda ws: text.count("#") / max(1, len(ws))),
            ("ellipsis_ratio", None, c.max_ellipsis_ratio,
             lambda ws: (text.count("...") + text.count("…")) / max(1, len(ws))),
        ]
        if all(lo is None and hi is None for _, lo, hi, _ in checks):
            return None
        ws = segment_words(text)
        for name, lo, hi, measure in checks:
            if lo is None and hi is None:
                continue
            v = measure(ws)
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                return name, v
        return None
