"""User-supplied lists: bad/sensitive words and a UT1-style URL blacklist. None is shipped."""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from megactllm.common.command import InputNotFoundError


def read_list(path: str | Path, what: str) -> list[str]:
    """Non-empty, non-comment lines of a UTF-8 file."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"{what} file {p} does not exist (set it in the recipe or remove the key)")
    words = []
    with open(p, encoding="utf-8", errors="strict") as f:
        for lineno, line in enumerate(f, 1):
            word = line.strip()
            if word and not word.startswith("#"):
                words.append(word)
    return words


class WordMatcher:
    """Finds listed words in text (case-insensitive), longest alternative first."""

    def __init__(self, words: list[str]):
        unique = sorted({w.lower() for w in words}, key=len, reverse=True)
        self.regex = re.compile("|".join(map(re.escape, unique))) if unique else None

    def hits(self, text: str) -> int:
        """Characters covered by (non-overlapping) hits."""
        if self.regex is None:
            return 0
        return sum(m.end() - m.start() for m in self.regex.finditer(text.lower()))

    def any(self, text: str) -> bool:
        return self.regex is not None and self.regex.search(text.lower()) is not None


class UrlBlacklist:
    """Domains from a UT1-style blacklist: a `domains` file, or a directory whose
    category folders each hold one (blacklists/<category>/domains)."""

    def __init__(self, path: str | Path, categories: list[str] | None = None):
        p = Path(path)
        if p.is_dir():
            files = sorted(Path(root) / "domains" for root, _, names in os.walk(p) if "domains" in names)
            if categories is not None:
                missing = set(categories) - {f.parent.name for f in files}
                if missing:
                    raise InputNotFoundError(f"URL blacklist {p} has no categories {sorted(missing)} "
                                            f"(it has {sorted(f.parent.name for f in files)})")
                files = [f for f in files if f.parent.name in categories]
            if not files:
                raise InputNotFoundError(f"URL blacklist directory {p} has no */domains files (UT1 layout)")
        else:
            files = [p]
        self.domains: set[str] = set()
        for f in files:
            self.domains.update(d.lower().lstrip(".") for d in read_list(f, "URL blacklist"))

    def blocked(self, url: str | None) -> bool:
        if not url:
            return False
        try:
            host = urlsplit(url if "//" in url else "//" + url).hostname or ""
        except ValueError:
            return False
        parts = host.lower().split(".")
        # a.b.example.com is blocked by any of its parent domains being listed.
        return any(".".join(parts[i:]) in self.domains for i in range(len(parts)))
