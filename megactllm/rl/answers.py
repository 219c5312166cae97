"""Verifiable math answers: pull the final answer out of a completion and compare it with a reference.

References come as Ape210K writes them (`45`, `3.5`, `(11/20)`, `2(1/3)` for a mixed number, `25%`,
small expressions such as `(1/5)/(3/4)`) or as GSM8K does (a worked solution ending in `#### 18`).
A completion's answer is, first found: the last `\\boxed{...}`, the text after the last `####`, an
`<answer>...</answer>` tag, the number after 答案/answer is, else the last number in the text.
Values are compared exactly as fractions (decimals are exact too); a percentage also matches its
number (25% and 25), since a word problem asking for a share may be answered either way.
"""
from __future__ import annotations

import ast
import re
import unicodedata
import warnings
from fractions import Fraction
from typing import Optional

_NUMBER = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
# A mixed number 2(1/3), a fraction (11/20) or 11/20, \frac{a}{b}, a decimal or integer, with an optional %.
_VALUE = re.compile(
    r"(?:\\d?frac\{\s*(-?\d+(?:\.\d+)?)\s*\}\{\s*(-?\d+(?:\.\d+)?)\s*\})"
    rf"|(?:({_NUMBER})?\(\s*({_NUMBER})\s*/\s*({_NUMBER})\s*\))"
    rf"|(?:({_NUMBER})\s*/\s*({_NUMBER}))"
    rf"|(?:({_NUMBER})\s*(%|％|percent)?)"
)
_BOXED = re.compile(r"\\boxed\s*\{")
_CUE = re.compile(r"(?:答案|答|结果|final answer|answer)\s*(?:是|为|:|：|is|=)?\s*", re.IGNORECASE)


def _normalise(text: str) -> str:
    # Full-width digits and signs (１２，％) -> ASCII; spaces inside numbers such as "1 000" are kept apart.
    text = unicodedata.normalize("NFKC", text)
    return text.replace("−", "-").replace("\\left", "").replace("\\right", "").replace("$", "")


def _boxed(text: str) -> Optional[str]:
    """The content of the last \\boxed{...}, braces balanced."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    at, depth = starts[-1], 1
    for i in range(at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[at:i]
    return None


def _to_fraction(number: str) -> Fraction:
    return Fraction(number.replace(",", ""))


def _value_of(match: re.Match) -> tuple[Fraction, bool]:
    """(value, was a percentage) of one _VALUE match."""
    g = match.groups()
    if g[0] is not None:
        return _to_fraction(g[0]) / _to_fraction(g[1]), False
    if g[3] is not None:
        whole = _to_fraction(g[2]) if g[2] is not None else Fraction(0)
        part = _to_fraction(g[3]) / _to_fraction(g[4])
        return (whole - part if whole < 0 else whole + part), False
    if g[5] is not None:
        return _to_fraction(g[5]) / _to_fraction(g[6]), False
    value = _to_fraction(g[7])
    return (value / 100, True) if g[8] else (value, False)


def values_in(text: str) -> list[tuple[Fraction, bool]]:
    """Every number-like value in text, in order, as (value, was a percentage)."""
    out = []
    for m in _VALUE.finditer(_normalise(text)):
        try:
            out.append(_value_of(m))
        except (ZeroDivisionError, ValueError):
            continue
    return out


def extract_answer(completion: str) -> Optional[str]:
    """The span of the completion that states its final answer (None: no number in it at all)."""
    text = _normalise(completion)
    boxed = _boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().splitlines()[0] if text.rsplit("####", 1)[1].strip() else None
    tag = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if tag:
        return tag[-1]
    cues = list(_CUE.finditer(text))
    if cues:
        after = text[cues[-1].end():]
        if values_in(after):
            return after
    found = list(_VALUE.finditer(text))
    return found[-1].group(0) if found else None


def _eval_expression(expr: str) -> Optional[Fraction]:
    """An arithmetic expression of numbers, + - * / and parentheses (Ape210K's compound answers), exactly."""
    expr = re.sub(r"(\d)\(", r"\1+(", expr)  # mixed number 2(1/3) -> 2+(1/3)
    expr = re.sub(rf"({_NUMBER[2:]})%", r"(\1/100)", expr)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "3.5x" is a SyntaxWarning before it is a SyntaxError
            tree = ast.parse(expr.replace(",", ""), mode="eval")
    except SyntaxError:
        return None

    def ev(node) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            a, b = ev(node.left), ev(node.right)
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op)) if not isinstance(node.op, ast.Div) else a / b
        raise ValueError(node)

    try:
        return ev(tree)
    except (ValueError, ZeroDivisionError):
        return None


def reference_value(answer: str) -> tuple[Fraction, bool]:
    """(value, is a percentage) of a reference answer; ValueError when it states no number."""
    text = _normalise(str(answer)).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    percent = text.endswith("%") or text.endswith("％")
    value = _eval_expression(text)
    if value is None:
        found = values_in(text)
        if not found:
            raise ValueError(f"reference answer {answer!r} states no number")
        value, percent = found[-1]
    return value, percent


def answers_match(completion: str, reference: str) -> bool:
    """Whether the completion's final answer equals the reference answer."""
    # A bare expression (an answer written as Ape210K writes its references) is its value.
    whole = _eval_expression(_normalise(completion).strip().rstrip(".。"))
    span = completion if whole is not None else extract_answer(completion)
    if span is None:
        return False
    target, percent = reference_value(reference)
    found = whole if whole is not None else _eval_expression(span.strip().rstrip(".。"))
    candidates = [(found, False)] if found is not None else values_in(span)[-1:]
    for value, was_percent in candidates:
        if value == target:
            return True
        # 25% for 0.25 and 25 for 25%: the same share, said two ways.
        if percent and value == target * 100 and not was_percent:
            return True
        if was_percent and value * 100 == target:
            return True
    return False
