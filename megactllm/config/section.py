"""How a recipe section is declared and checked.

A section is a dataclass deriving from Section, with its recipe name and one `option(...)` per key:

    @dataclass
    class DpoConfig(Section):
        \"\"\"Direct preference optimisation (train.stage=dpo).\"\"\"   # the section's meaning, in the docs
        NAME: ClassVar[str] = "dpo"
        beta: float = option(0.5, "strength of the KL penalty to the reference", above=0)
        loss_type: Literal["sigmoid", "ipo"] = option("sigmoid", "the DPO loss (ipo: Azar et al.)")

        def check(self) -> None:              # relations between this section's keys
            if self.loss_type == "ipo" and self.label_smoothing:
                self.fail("label_smoothing", "applies to the sigmoid loss only; set it to 0 for ipo")

Constructing a section checks it (__post_init__): every value against its annotation (a Literal is
a choice, Optional allows null), against its declared range (min/max/above/below), then the
section's own `check()`. A failure is one ConfigError naming `section.key`, the value and what is
allowed. The annotation, default and doc are what `megactllm train --help-config` and
docs/recipe.md print (megactllm.config.reference).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar, Literal, Optional, Union

from megactllm.errors import UserError


class ConfigError(UserError, ValueError):
    """A recipe value that is not allowed; the message names section.key, the value and what is."""


_NO_DEFAULT = dataclasses.MISSING


def option(default: Any = None, doc: str = "", *, factory: Optional[typing.Callable] = None,
           min: Optional[float] = None, max: Optional[float] = None,
           above: Optional[float] = None, below: Optional[float] = None) -> Any:
    """A recipe key: its default (or `factory` for a list/dict), its meaning, and its range
    (min <= value <= max, above < value < below; null is always allowed where the type is Optional)."""
    if not doc:
        raise TypeError("every recipe key needs its doc")  # a programming mistake, not the user's
    meta = {"doc": doc, "min": min, "max": max, "above": above, "below": below}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe_type(tp: Any) -> str:
    """The annotation as a reader writes it: int, float or null, one of cosine|linear, ..."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = " | ".join(describe_type(a) for a in args)
        return f"{inner} or null" if len(args) < len(typing.get_args(tp)) else inner
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin is list or tp is list:
        args = typing.get_args(tp)
        return f"list of {describe_type(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return "mapping"
    return getattr(tp, "TYPE_NAME", getattr(tp, "__name__", str(tp)))


def _type_hints(cls) -> dict:
    hints = cls.__dict__.get("_hints")
    if hints is None:
        hints = typing.get_type_hints(cls)
        cls._hints = hints
    return hints


class _Mismatch(Exception):
    """The value does not have the annotated type (internal; becomes a ConfigError naming the key)."""


def _conform(tp: Any, value: Any) -> Any:
    """`value` as `tp` wants it (an int where a float is asked becomes a float), else _Mismatch."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _conform(arg, value)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            return value
        raise _Mismatch
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `2e-4` (no dot) as a string: the number it means
            try:
                value = float(value)
            except ValueError:
                raise _Mismatch from None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(tp)
        return [_conform(args[0], v) for v in value] if args else list(value)
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    if isinstance(tp, type) and hasattr(tp, "parse"):  # a value type of its own (Duration)
        if isinstance(value, tp):
            return value
        try:
            return tp.parse(value)
        except (TypeError, ValueError):
            raise _Mismatch from None
    raise TypeError(f"recipe keys cannot be of type {tp!r}")  # a programming mistake


class Section:
    """Base of every recipe section (a dataclass); see this module's docstring."""

    NAME: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                conformed = _conform(hints[f.name], value)
            except _Mismatch:
                self.fail(f.name, f"must be {expected(hints[f.name])}")
            if conformed is not value:
                object.__setattr__(self, f.name, conformed)
            self._check_range(f, conformed)
        self.check()

    def check(self) -> None:
        """Relations between this section's keys (a section overrides it); raise with self.fail."""

    def fail(self, key: str, problem: str, value: Any = _NO_DEFAULT) -> typing.NoReturn:
        """Raise the ConfigError for `section.key=value`: `problem` says what is allowed."""
        value = getattr(self, key) if value is _NO_DEFAULT else value
        raise ConfigError(f"{self.NAME}.{key}={_show(value)}: {problem}")

    def _check_range(self, f: dataclasses.Field, value: Any) -> None:
        if value is None or not isinstance(value, (int, float)) or isinstance(value, bool):
            return
        m = f.metadata
        if m.get("min") is not None and value < m["min"]:
            self.fail(f.name, f"must be at least {m['min']:g}")
        if m.get("max") is not None and value > m["max"]:
            self.fail(f.name, f"must be at most {m['max']:g}")
        if m.get("above") is not None and value <= m["above"]:
            self.fail(f.name, f"must be greater than {m['above']:g}")
        if m.get("below") is not None and value >= m["below"]:
            self.fail(f.name, f"must be less than {m['below']:g}")

    @classmethod
    def keys(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))


def expected(tp: Any) -> str:
    """What a value of `tp` looks like, for an error message: "an integer or null", "one of adam, sgd"."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        text = " or ".join(expected(a) for a in args)
        return f"{text} or null" if len(args) < len(typing.get_args(tp)) else text
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin is list or tp is list:
        args = typing.get_args(tp)
        return f"a list of {expected(args[0]).split(' ', 1)[1]}s" if args else "a list"
    simple = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}
    if tp in simple:
        return simple[tp]
    return getattr(tp, "EXPECTED", describe_type(tp))


def _show(value: Any) -> str:
    """A value as the user would write it in an override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) or hasattr(type(value), "parse"):  # a Duration shows as its text
        return repr(str(value))
    return str(value)
