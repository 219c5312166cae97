"""One document through the whole filter: normalise, page rules, line rules, content rules."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .config import CleanConfig
from .doc_rules import DocumentFilter
from .line_rules import LineFilter
from .normalize import normalize


@dataclass
class Outcome:
    text: str  # cleaned text (meaningful when rule is None)
    rule: str | None  # first rule the document failed, None if kept
    value: object = None  # what the rule measured
    removed_lines: Counter = field(default_factory=Counter)
    removed_chars: Counter = field(default_factory=Counter)


class Cleaner:
    def __init__(self, cfg: CleanConfig):
        self.cfg = cfg
        self.lines = LineFilter(cfg.lines)
        self.docs = DocumentFilter(cfg.filters)

    def clean(self, text: str, url: str | None = None) -> Outcome:
        if not text.strip():
            return Outcome("", "empty", 0)
        text = normalize(text, self.cfg.normalize)
        page = self.docs.page_failure(text, url)
        if page is not None:
            return Outcome(text, *page)
        lines = self.lines.apply(text)
        out = Outcome(lines.text, None, None, lines.removed_lines, lines.removed_chars)
        if not lines.text:
            # Tagged as its own rule; the value names the line rule that removed most.
            out.rule, out.value = "all_lines_removed", lines.removed_lines.most_common(1)[0][0]
            return out
        content = self.docs.content_failure(lines.text)
        if content is not None:
            out.rule, out.value = content
        return out
