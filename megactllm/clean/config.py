"""The cleaning recipe: every MAP-CC rule with its published threshold as the default.

A recipe is YAML with the sections below (see examples/clean/mapcc.yaml); any key can be
overridden from the command line as ``section.key=value``. A rule is switched off by setting
its threshold to ``null``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megactllm.common.recipe import load_recipe
from megactllm.errors import UserError


class CleanConfigError(UserError, ValueError):
    """A cleaning recipe (or override) with an unknown section or key, or a value of the wrong kind."""


@dataclass
class InputConfig:
    paths: list[str] = field(default_factory=list)  # files or globs; each file is one shard
    format: str = "auto"  # auto | jsonl | txt | parquet (auto: by extension; .gz/.zst allowed)
    text_key: str = "text"
    url_key: str = "url"
    id_key: str = "id"
    max_record_bytes: int = 16 * 1024 * 1024  # larger records are rejected as "giant" unparsed


@dataclass
class NormalizeConfig:
    nfkc: bool = True
    fullwidth_to_halfwidth: bool = True  # full-width ASCII punctuation/letters and U+3000
    remove_urls: bool = True  # in-text URLs
    traditional_to_simplified: bool = False  # OpenCC t2s


@dataclass
class LineConfig:
    """Rules applied to each line; a failing line is removed, not the document."""
    require_terminal_punctuation: bool = True
    drop_javascript: bool = True
    min_words: int | None = 3  # jieba words, punctuation and spaces not counted
    drop_lorem_ipsum: bool = True
    bad_words_file: str | None = None  # one word per line; any hit removes the line
    sensitive_words_file: str | None = None  # one word per line
    max_sensitive_ratio: float | None = 0.5  # share of a line's characters covered by hits
    similar_line_max_edit_ratio: float | None = 0.1  # edit distance <= ratio * length
    similar_line_min_chars: int = 15  # lines this short or shorter are never compared
    similar_line_window: int = 64  # edit distance against this many previous kept lines (exact repeats: all)


@dataclass
class FilterConfig:
    """Document rules; a failing document is removed, tagged with the first rule it failed."""
    url_blacklist: str | None = None  # UT1-style: a domains file, or a directory of */domains
    url_blacklist_categories: list[str] | None = None  # UT1 category folders to use; null = all
    max_bracket_ratio: float | None = 0.1  # characters inside 【】
    min_sentences: int | None = 2  # "more than one sentence"
    min_chars: int | None = 50
    max_chars: int | None = 10_000
    min_mean_word_length: float | None = 1.3
    max_mean_word_length: float | None = 10.0
    max_hash_ratio: float | None = 0.1  # '#' per word
    max_ellipsis_ratio: float | None = 0.1  # ellipses per word
    max_digit_ratio: float | None = 0.3
    max_readmore_line_ratio: float | None = 0.3
    max_bullet_line_ratio: float | None = 0.9
    require_punctuation: bool = True
    min_unique_char_ratio: float | None = 0.1  # must be strictly greater
    min_char_entropy: float | None = 3.0  # bits
    max_top_ngram_coverage: dict[int, float] | None = field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    max_dup_ngram_coverage: dict[int, float] | None = field(
        default_factory=lambda: {n: 0.60 for n in range(5, 11)})
    min_zh_char_ratio: float | None = 0.3  # Han characters / non-space characters
    languages: list[str] | None = field(default_factory=lambda: ["zh"])  # langid codes
    min_language_score: float = 0.8  # normalised langid probability of an allowed language


@dataclass
class DedupConfig:
    exact: bool = True  # identical normalised text
    fuzzy: bool = True  # MinHash-LSH
    # MAP-CC published 13-grams with 9 bands x 13 rows (S-curve midpoint near Jaccard 0.84):
    # on real CLUE documents with 1-3% of characters changed it finds about 7% of the copies
    # (bench/clean.py). 5-grams with 20 x 5 find over 99% with no false pair among the
    # originals, so they are the default; set ngram: 13, bands: 9, rows: 13 for MAP-CC's.
    ngram: int = 5  # character n-grams
    num_perm: int = 128
    bands: int = 20
    rows: int = 5
    seed: int = 1
    # Optional check of each LSH candidate pair: estimated Jaccard (share of equal signature
    # values) must reach it. null = MAP-CC behaviour, a shared band is enough.
    verify_threshold: float | None = None
    threads: int = 1  # C++ threads per signature task


@dataclass
class RunConfig:
    output_dir: str = "clean_out"
    workers: int = 1  # local processes per stage
    keep_removed: bool = True  # removed documents kept in a side output tagged with the rule
    examples_per_rule: int = 3
    progress_interval_s: float = 10.0


@dataclass
class CleanConfig:
    input: InputConfig = field(default_factory=InputConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    lines: LineConfig = field(default_factory=LineConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str = "<dict>") -> "CleanConfig":
        data = dict(data or {})
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(sections)
        if unknown:
            raise CleanConfigError(f"{source}: unknown section(s) {sorted(unknown)}; expected {sorted(sections)}")
        kwargs = {}
        for name, f in sections.items():
            section_cls = f.default_factory().__class__  # type: ignore[misc]
            values = data.get(name) or {}
            if not isinstance(values, dict):
                raise CleanConfigError(f"{source}: section '{name}' must be a mapping, got {type(values).__name__}")
            known = {sf.name for sf in dataclasses.fields(section_cls)}
            bad = set(values) - known
            if bad:
                raise CleanConfigError(f"{source}: unknown key(s) {sorted(bad)} in section '{name}'; "
                                 f"expected some of {sorted(known)}")
            kwargs[name] = section_cls(**values)
        cfg = cls(**kwargs)
        cfg._fix_types()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "CleanConfig":
        data = load_recipe(str(path), overrides or [])
        return cls.from_dict(data, source=str(path))

    def _fix_types(self) -> None:
        if isinstance(self.input.paths, str):  # input.paths=/data/*.jsonl on the command line
            self.input.paths = [self.input.paths]
        if isinstance(self.filters.languages, str):
            self.filters.languages = [self.filters.languages]
        # YAML keys of n-gram maps may come in as strings ("2": 0.2).
        f = self.filters
        for name in ("max_top_ngram_coverage", "max_dup_ngram_coverage"):
            value = getattr(f, name)
            if value is not None:
                try:
                    setattr(f, name, {int(k): float(v) for k, v in value.items()})
                except (AttributeError, TypeError, ValueError):
                    raise CleanConfigError(f"filters.{name}={value!r}: expected a mapping of n-gram size to "
                                           "coverage, e.g. {2: 0.2, 3: 0.18}") from None
        d = self.dedup
        if d.fuzzy and d.bands * d.rows > d.num_perm:
            raise CleanConfigError(f"dedup: bands * rows = {d.bands * d.rows} exceeds num_perm = {d.num_perm}")
