"""Every recipe key with its type, default and meaning, from the declarations themselves.

`megactllm train --help-config` prints it; docs/recipe.md is the same text (tests/test_config_schema.py
keeps it current: regenerate with `megactllm train --help-config > docs/recipe.md`).
"""
from __future__ import annotations

import dataclasses
import inspect
import typing

from megactllm.config import legacy
from megactllm.config.schema import SECTIONS
from megactllm.config.section import _show, describe_type


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return _show(f.default)
    return _show(f.default_factory())


def _range(f: dataclasses.Field) -> str:
    m = f.metadata
    parts = []
    if m.get("min") is not None:
        parts.append(f">= {m['min']:g}")
    if m.get("above") is not None:
        parts.append(f"> {m['above']:g}")
    if m.get("max") is not None:
        parts.append(f"<= {m['max']:g}")
    if m.get("below") is not None:
        parts.append(f"< {m['below']:g}")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def recipe_reference() -> str:
    """The reference as Markdown: one table per section."""
    lines = [
        "# Recipe reference",
        "",
        "Generated from megactllm/config/schema.py by `megactllm train --help-config`; do not edit by hand.",
        "",
        "A recipe is a YAML mapping of these sections; any key can be overridden on the command line as",
        "`section.key=value` (the value is read as YAML). A value outside its type or range, or against",
        "another key, is one `error:` line naming `section.key` before anything runs (`--dry-run` too).",
        "",
    ]
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        lines += [f"## {name}", "", inspect.cleandoc(cls.__doc__ or ""), "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            kind = describe_type(hints[f.name])
            rng = _range(f)
            if rng:
                kind += f" ({rng})"
            lines.append(f"| `{name}.{f.name}` | {_cell(kind)} | `{_cell(_default(f))}` | {_cell(f.metadata['doc'])} |")
        lines.append("")
    lines += ["## Old key names", "",
              "Recipes written before the sections above still load; each old key is read as its new one and the",
              "run prints one `note:` line saying so.", "", "| old key | new key |", "|---|---|"]
    for key, unit in legacy.DURATION_KEYS.items():
        lines.append(f"| `train.{key}: N` | `train.duration: N {unit}` |")
    for key, (section, new_key) in legacy.MOVED.items():
        lines.append(f"| `train.{key}` | `{section}.{new_key}` |")
    return "\n".join(lines) + "\n"
