"""Line-level rules: a failing line is removed from the document, which is then judged whole.

MAP-CC's scripts define these and never call them; here every line of every document goes
through them, and each removal is counted against its rule.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from .config import LineConfig
from .textstats import PUNCT, TERMINAL_PUNCT
from .wordlists import WordMatcher, read_list
from .words import words as segment_words

_WORD_CHAR_RE = re.compile(r"[^\W_]")
# Split on spaces and punctuation that the segmenter never puts inside a word (it may join
# "+#&._%-" with letters, as in "C++"), so each piece holds at least one whole word.
_SPLIT_RE = re.compile("[\\s" + re.escape("".join(sorted(PUNCT - set("+#&._%-")))) + "]+")


@dataclass
class LineResult:
    text: str
    removed_lines: Counter = field(default_factory=Counter)  # rule -> lines
    removed_chars: Counter = field(default_factory=Counter)  # rule -> characters


def _similar_lines(lines: list[str], max_ratio: float, min_len: int, window: int) -> list[bool]:
    from .minhash import native

    return native().similar_lines(lines, max_ratio, min_len, window)


class LineFilter:
    def __init__(self, cfg: LineConfig):
        self.cfg = cfg
        self.bad = WordMatcher(read_list(cfg.bad_words_file, "bad-words")) if cfg.bad_words_file else None
        self.sensitive = (WordMatcher(read_list(cfg.sensitive_words_file, "sensitive-words"))
                          if cfg.sensitive_words_file else None)

    def line_rule(self, line: str) -> str | None:
        """Name of the first rule the line fails, or None."""
        cfg = self.cfg
        lower = line.lower()
        if cfg.drop_javascript and "javascript" in lower:
            return "line_javascript"
        if cfg.drop_lorem_ipsum and "lorem ipsum" in lower:
            return "line_lorem_ipsum"
        if self.bad is not None and self.bad.any(line):
            return "line_bad_words"
        if (self.sensitive is not None and cfg.max_sensitive_ratio is not None
                and self.sensitive.hits(line) > cfg.max_sensitive_ratio * len(line)):
            return "line_sensitive_words"
        if cfg.require_terminal_punctuation and line[-1] not in TERMINAL_PUNCT:
            return "line_terminal_punctuation"
        if cfg.min_words is not None and not self._enough_words(line):
            return "line_min_words"
        return None

    def _enough_words(self, line: str) -> bool:
        # A line with min_words pieces holding a letter, digit or Han character has at least
        # that many words, and passes without running the segmenter.
        pieces = sum(1 for p in _SPLIT_RE.split(line) if _WORD_CHAR_RE.search(p))
        return pieces >= self.cfg.min_words or len(segment_words(line)) >= self.cfg.min_words

    def apply(self, text: str) -> LineResult:
        cfg = self.cfg
        result = LineResult(text="")
        kept: list[str] = []
        for raw in text.split("\n"):
            line = raw.strip()
            if not line:
                continue  # blank lines carry no text
            rule = self.line_rule(line)
            if rule is None:
                kept.append(line)
            else:
                result.removed_lines[rule] += 1
                result.removed_chars[rule] += len(line)
        if cfg.similar_line_max_edit_ratio is not None and len(kept) > 1:
            dup = _similar_lines(kept, cfg.similar_line_max_edit_ratio, cfg.similar_line_min_chars,
                                 cfg.similar_line_window)
            for i in (i for i, d in enumerate(dup) if d):
                result.removed_lines["line_similar"] += 1
                result.removed_chars["line_similar"] += len(kept[i])
            kept = [line for line, d in zip(kept, dup) if not d]
        result.text = "\n".join(kept)
        return result
