"""Offline language check. No model is downloaded at run time.

CJK languages are told apart by script, which is reliable and fast: Chinese is Han
without kana or hangul. Other languages go to langid (its model ships inside the pip
package), on a sample, since langid costs milliseconds per kilobyte.
"""
from __future__ import annotations

import re
from functools import lru_cache

from .textstats import HAN_CLASS, han_count
from megactllm.common.optional import require

# Runs of letters in any other script (Latin, Cyrillic, ...): one unit per word.
_FOREIGN_WORD_RE = re.compile(r"[^\W\d_\u3040-\u30ff\u31f0-\u31ff\u1100-\u11ff\uac00-\ud7af" + HAN_CLASS + "]+")
_KANA_RE = re.compile("[\u3040-\u30ff\u31f0-\u31ff]")
_HANGUL_RE = re.compile("[\uac00-\ud7af\u1100-\u11ff]")
LANGID_SAMPLE_CHARS = 1000


@lru_cache(maxsize=1)
def _langid():
    langid = require("langid.langid", "the language check of non-CJK text (its model ships in the package)")
    LanguageIdentifier, model = langid.LanguageIdentifier, langid.model

    return LanguageIdentifier.from_modelstring(model, norm_probs=True)


def script_counts(text: str) -> tuple[int, int, int, int]:
    """(Han characters, kana, hangul, words in other alphabets)."""
    han = han_count(text)
    kana = len(_KANA_RE.findall(text))
    hangul = len(_HANGUL_RE.findall(text))
    # A Latin word is one unit, like one Han character: weighting by letters would make a
    # Chinese page with a few English names look half English.
    foreign = len(_FOREIGN_WORD_RE.findall(text))
    return han, kana, hangul, foreign


def detect(text: str) -> tuple[str, float]:
    """(ISO 639-1 code or 'und', confidence in [0, 1])."""
    han, kana, hangul, foreign = script_counts(text)
    units = han + kana + hangul + foreign
    if units == 0:
        return "und", 0.0
    if kana >= 0.1 * (han + kana) and kana > 0:
        return "ja", (han + kana) / units
    if hangul >= max(han, foreign) and hangul > 0:
        return "ko", hangul / units
    if han >= foreign:
        return "zh", han / units
    lang, prob = _langid().classify(text[:LANGID_SAMPLE_CHARS])
    return lang, float(prob) * foreign / units
