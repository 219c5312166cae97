"""Counts per rule, kept as plain dicts so shards can write them as JSON and the report can sum them."""
from __future__ import annotations

from typing import Any

EXAMPLE_CHARS = 300


def new_stats() -> dict[str, Any]:
    return {"input_docs": 0, "input_bytes": 0, "input_chars": 0, "kept_docs": 0, "kept_chars": 0,
            "rules": {}, "line_rules": {}, "bad_input": {}}


def add_removed(stats: dict, rule: str, chars: int, example: dict | None, max_examples: int) -> None:
    entry = stats["rules"].setdefault(rule, {"docs": 0, "chars": 0, "examples": []})
    entry["docs"] += 1
    entry["chars"] += chars
    if example is not None and len(entry["examples"]) < max_examples:
        example = dict(example)
        if isinstance(example.get("text"), str) and len(example["text"]) > EXAMPLE_CHARS:
            example["text"] = example["text"][:EXAMPLE_CHARS] + "…"
        entry["examples"].append(example)


def add_line_removals(stats: dict, lines: dict[str, int], chars: dict[str, int]) -> None:
    for rule, n in lines.items():
        entry = stats["line_rules"].setdefault(rule, {"lines": 0, "chars": 0})
        entry["lines"] += n
        entry["chars"] += chars.get(rule, 0)


def add_bad(stats: dict, reason: str, nbytes: int, where: str, detail: str, max_examples: int) -> None:
    entry = stats["bad_input"].setdefault(reason, {"records": 0, "bytes": 0, "examples": []})
    entry["records"] += 1
    entry["bytes"] += nbytes
    if len(entry["examples"]) < max_examples:
        entry["examples"].append({"where": where, "detail": detail})


def merge(total: dict, part: dict, max_examples: int) -> dict:
    """Add `part` into `total` (same shape); examples are kept up to max_examples per rule."""
    for key, value in part.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict):
            sub = total.setdefault(key, {})
            for name, entry in value.items():
                dst = sub.setdefault(name, {k: ([] if isinstance(v, list) else 0) for k, v in entry.items()})
                for k, v in entry.items():
                    if isinstance(v, list):
                        dst[k].extend(v[: max(0, max_examples - len(dst[k]))])
                    else:
                        dst[k] = dst.get(k, 0) + v
    return total
