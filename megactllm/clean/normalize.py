"""Text normalisation applied before any rule: NFKC, full- to half-width, URL removal, t2s."""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from .config import NormalizeConfig
from megactllm.common.optional import require

# Full-width ASCII variants U+FF01..U+FF5E map to U+0021..U+007E; U+3000 is the ideographic space.
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_FULLWIDTH[0x3000] = 0x20

# Scheme URLs and bare www. hosts; stops at whitespace, CJK characters and closing brackets,
# since Chinese text often runs straight on after a link.
URL_RE = re.compile(r"(?:https?|ftp)://[^\s\u3000-\u303f\u4e00-\u9fff\uff00-\uffef<>\"'）)】\]]+"
                    r"|www\.[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+[^\s\u3000-\u303f\u4e00-\u9fff\uff00-\uffef<>\"'）)】\]]*")


def fullwidth_to_halfwidth(text: str) -> str:
    return text.translate(_FULLWIDTH)


def remove_urls(text: str) -> str:
    return URL_RE.sub("", text)


@lru_cache(maxsize=1)
def _t2s_converter():
    opencc = require("opencc", "traditional_to_simplified (opencc-python-reimplemented)")
    return opencc.OpenCC("t2s")


def traditional_to_simplified(text: str) -> str:
    return _t2s_converter().convert(text)


def normalize(text: str, cfg: NormalizeConfig) -> str:
    if cfg.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if cfg.fullwidth_to_halfwidth:
        text = fullwidth_to_halfwidth(text)
    if cfg.remove_urls:
        text = remove_urls(text)
    if cfg.traditional_to_simplified:
        text = traditional_to_simplified(text)
    # Unify line breaks so line rules see one convention.
    return text.replace("\r\n", "\n").replace("\r", "\n")
