"""Parallel corpora as training documents: English-Chinese sentence pairs rendered in a template.

Linly's continued pretraining fed parallel text so the model ties its English to its Chinese.
Pairs come from `en<TAB>zh` lines (.tsv/.txt) or jsonl records (`{"en": ..., "zh": ...}`, keys
configurable). Each pair is rendered once per direction with a template; `pairs_per_document`
consecutive pairs of the same direction are joined into one document (blank line between):

    template "{src_lang}: {src}\\n{tgt_lang}: {tgt}", directions en-zh and zh-en, 2 pairs a document:
      English: Hello.\\n中文: 你好。\\n\\nEnglish: Thanks.\\n中文: 谢谢。
      中文: 你好。\\nEnglish: Hello.\\n\\n中文: 谢谢。\\nEnglish: Thanks.

Documents are written as jsonl `{"text": ...}` (what tools/preprocess_data.py reads), so the
tokenized dataset is counted and reported by the same pipeline as every other input. Bad lines
are counted by reason and the first few named file:line; `strict` stops at the first.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

from megactllm.common.atomic import atomic_write
from megactllm.errors import UserError

SKIP_REASONS = {
    "wrong_fields": "a .tsv line does not hold exactly two tab-separated fields",
    "malformed_json": "a jsonl line is not a JSON object",
    "missing_key": "a jsonl record lacks a language key, or its value is not a string",
    "empty_side": "one side of the pair is empty or whitespace only",
    "invalid_utf8": "bytes are not UTF-8",
}
DEFAULT_TEMPLATE = "{src_lang}: {src}\n{tgt_lang}: {tgt}"
DEFAULT_LANGUAGE_NAMES = {"en": "English", "zh": "中文"}


class ParallelCorpusError(UserError, ValueError):
    """A parallel corpus or option that cannot be used (also: a bad line under strict)."""


@dataclass
class ParallelCorpusSettings:
    inputs: Sequence[str]
    output: str  # jsonl of {"text": document}
    languages: tuple = ("en", "zh")  # (first column / key, second column / key)
    directions: Sequence[str] = ("en-zh", "zh-en")
    template: str = DEFAULT_TEMPLATE
    language_names: dict = field(default_factory=lambda: dict(DEFAULT_LANGUAGE_NAMES))
    pairs_per_document: int = 1
    strict: bool = False
    max_reported_skips: int = 5


@dataclass
class ParallelSummary:
    lines: int = 0
    pairs: int = 0
    documents: Counter = field(default_factory=Counter)  # direction -> documents
    characters: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_skips: list = field(default_factory=list)

    def format(self) -> str:
        docs = ", ".join(f"{d}: {n:,}" for d, n in self.documents.items())
        lines = [
            f"parallel lines: {self.lines:,}   pairs: {self.pairs:,}   documents: {sum(self.documents.values()):,} ({docs})   "
            f"characters: {self.characters:,}",
            f"skipped: {sum(self.skipped.values()):,} lines",
        ]
        for reason, text in SKIP_REASONS.items():
            if self.skipped.get(reason):
                lines.append(f"  {reason:15s} {self.skipped[reason]:>10,}   ({text})")
        if self.first_skips:
            lines.append("first skipped lines:")
            lines.extend(f"  {s}" for s in self.first_skips)
        return "\n".join(lines)


def _check_config(config: ParallelCorpusSettings) -> list[tuple[str, str]]:
    first, second = config.languages
    known = {f"{first}-{second}": (first, second), f"{second}-{first}": (second, first)}
    bad = [d for d in config.directions if d not in known]
    if bad or not config.directions:
        raise ParallelCorpusError(f"directions {list(config.directions)}: use {sorted(known)} (one or both)")
    if config.pairs_per_document < 1:
        raise ParallelCorpusError(f"pairs_per_document must be >= 1, got {config.pairs_per_document}")
    try:
        config.template.format(src="", tgt="", src_lang="", tgt_lang="")
    except (KeyError, IndexError, ValueError) as e:
        raise ParallelCorpusError(
            f"template {config.template!r} is not usable ({e!r}): it may name {{src}}, {{tgt}}, {{src_lang}}, {{tgt_lang}}"
        ) from None
    if "{src}" not in config.template or "{tgt}" not in config.template:
        raise ParallelCorpusError(f"template {config.template!r} must contain both {{src}} and {{tgt}}")
    for path in config.inputs:
        if not os.path.isfile(path):
            raise ParallelCorpusError(f"input {path} does not exist")
    return [known[d] for d in config.directions]


def _parse_line(raw: bytes, jsonl: bool, languages: tuple) -> tuple[Optional[dict], Optional[str], str]:
    """({lang: text}, None, "") for a good line, or (None, reason, detail)."""
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        return None, "invalid_utf8", str(e)
    if jsonl:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            return None, "malformed_json", e.msg
        if not isinstance(record, dict):
            return None, "malformed_json", f"a {type(record).__name__}, not an object"
        for lang in languages:
            if not isinstance(record.get(lang), str):
                return None, "missing_key", f"key {lang!r} is absent or not a string"
        pair = {lang: record[lang] for lang in languages}
    else:
        fields = line.split("\t")
        if len(fields) != 2:
            return None, "wrong_fields", f"{len(fields)} fields"
        pair = dict(zip(languages, fields))
    pair = {k: v.strip() for k, v in pair.items()}
    empty = [k for k, v in pair.items() if not v]
    if empty:
        return None, "empty_side", f"{empty[0]} is empty"
    return pair, None, ""


def read_pairs(config: ParallelCorpusSettings, summary: ParallelSummary) -> Iterator[dict]:
    """Good pairs of every input in order; bad lines counted in `summary` (or raised under strict)."""
    for path in config.inputs:
        jsonl = path.endswith((".jsonl", ".json"))
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue  # blank lines separate nothing in either format
                summary.lines += 1
                pair, reason, detail = _parse_line(raw, jsonl, config.languages)
                if pair is not None:
                    summary.pairs += 1
                    yield pair
                    continue
                where = f"{path}:{number} {reason} ({detail})"
                if config.strict:
                    raise ParallelCorpusError(f"{where}: {SKIP_REASONS[reason]}")
                summary.skipped[reason] += 1
                if len(summary.first_skips) < config.max_reported_skips:
                    summary.first_skips.append(where)


def render(pairs: Sequence[dict], src: str, tgt: str, config: ParallelCorpusSettings) -> str:
    names = config.language_names
    units = [
        config.template.format(src=p[src], tgt=p[tgt], src_lang=names.get(src, src), tgt_lang=names.get(tgt, tgt))
        for p in pairs
    ]
    return "\n\n".join(units)


def write_parallel_documents(config: ParallelCorpusSettings, report: Optional[Callable[[str], None]] = None) -> ParallelSummary:
    """Render every pair of the inputs into documents written to config.output; returns the counts."""
    directions = _check_config(config)
    summary = ParallelSummary()

    def flush(group, out):
        for src, tgt in directions:
            text = render(group, src, tgt, config)
            out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            summary.documents[f"{src}-{tgt}"] += 1
            summary.characters += len(text)

    # A strict failure, an interrupt or an empty result leaves no half-written output.
    with atomic_write(config.output) as out:
        group: list = []
        for pair in read_pairs(config, summary):
            group.append(pair)
            if len(group) == config.pairs_per_document:
                flush(group, out)
                group = []
                if report and summary.pairs % 100_000 < config.pairs_per_document:
                    report(f"{summary.pairs:,} pairs, {sum(summary.documents.values()):,} documents")
        if group:  # the last, shorter document
            flush(group, out)
        if not summary.pairs:
            raise ParallelCorpusError(f"no usable pair in {list(config.inputs)}:\n{summary.format()}")
    return summary
