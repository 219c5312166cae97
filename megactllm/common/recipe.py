"""YAML recipes with `section.key=value` overrides from the command line.

A recipe is a mapping of sections, each a mapping of keys. An override's value is parsed as
YAML, so ints, floats, bools, null, lists ([a, b]) and maps ({2: 0.3}) come out the way a user
expects. The callers (megactllm.config, megactllm.clean) turn the mapping into their dataclasses
and pass their own error class, so a mistake is one `error:` line naming the file or override.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import yaml

from megactllm.errors import UserError


class RecipeError(UserError, ValueError):
    """A recipe file or an override that cannot be read."""


def read_recipe(path: str, error: type = RecipeError, what: str = "recipe") -> dict:
    """The mapping in the YAML file at `path` (an empty file is an empty mapping)."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except yaml.YAMLError as e:
        raise error(f"{what} {path} is not valid YAML: {e}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise error(f"{what} {path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_override(item: str, error: type = RecipeError, example: str = "") -> tuple[str, str, Any]:
    """(section, key, value) of `section.key=value`; `example` shows the caller's own form."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        hint = f", e.g. {example}" if example else ""
        raise error(f"override {item!r} must look like section.key=value{hint}")
    dotted, text = item.split("=", 1)
    section, key = dotted.split(".", 1)
    return section, key, yaml.safe_load(text)


def apply_overrides(raw: dict, overrides: Iterable[str], sections: Optional[Iterable[str]] = None,
                    error: type = RecipeError, example: str = "") -> dict:
    """Set each `section.key=value` in `raw` (in place; also returned). With `sections`, an
    override of any other section is refused here, naming the override."""
    known = None if sections is None else sorted(sections)
    for item in overrides:
        section, key, value = parse_override(item, error, example)
        if known is not None and section not in known:
            raise error(f"override {item!r}: unknown section {section!r}; sections: {known}")
        if raw.get(section) is None:
            raw[section] = {}
        raw[section][key] = value
    return raw


def load_recipe(path: Optional[str], overrides: Iterable[str] = (), sections: Optional[Iterable[str]] = None,
                error: type = RecipeError, what: str = "recipe", example: str = "") -> dict:
    """The recipe at `path` (none: an empty one) with the overrides applied."""
    raw = read_recipe(path, error, what) if path else {}
    return apply_overrides(raw, overrides, sections, error, example)
