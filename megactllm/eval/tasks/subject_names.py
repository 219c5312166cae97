"""Display names and categories of benchmark subjects: shipped with the package, overridable.

The subjects of CMMLU (67), C-Eval (52) and MMLU (57) are fixed and public. Their display names
(what the prompt's description line says, e.g. cmmlu chinese_driving_rule -> 中国驾驶规则) are
those of lm-eval 0.4's task configs, so that prompts equal lm-eval's whatever directory the CSV
files come from: CMMLU's own repository ships data/{dev,test} with no mapping.json. Categories are
lm-eval's groups for MMLU and the usual four (STEM, Humanities, Social Sciences, Other) for CMMLU
and C-Eval.

A `mapping.json` beside the splits ({subject: {"name": ..., "category": ...}}) names the subjects
of other benchmarks and overrides the shipped entries, field by field. A subject known to neither
gets its file name as display name and category Other, with a warning that says so.
"""
from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path

from megactllm.eval.errors import EvalDataError, utf8_file

_TABLES = Path(__file__).with_name("subjects")
FALLBACK_CATEGORY = "Other"


class UnknownSubjectWarning(UserWarning):
    """A subject has no display name in the shipped tables or in mapping.json."""


@lru_cache(maxsize=None)
def shipped_subjects(benchmark: str) -> dict[str, dict]:
    """{subject: {"name", "category"}} shipped for `benchmark` ({} for benchmarks without a table)."""
    path = _TABLES / f"{benchmark}.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def read_mapping(root: Path) -> dict:
    """The mapping.json beside the splits, or {} when there is none."""
    path = root / "mapping.json"
    if not path.is_file():
        return {}
    try:
        with utf8_file(path):
            mapping = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EvalDataError(path, f"not valid JSON: {e}") from None
    bad = [k for k, v in mapping.items() if not isinstance(v, dict)] if isinstance(mapping, dict) else ["(top level)"]
    if bad:
        raise EvalDataError(path, f"expected {{subject: {{\"name\": ..., \"category\": ...}}}}; {bad[0]!r} is not an object")
    return mapping


def subject_info(benchmark: str, name: str, mapping: dict, root: Path, file: Path) -> tuple[str, str]:
    """(display name, category) of a subject: mapping.json's fields first, then the shipped table,
    then the file name (with a warning naming the fallback)."""
    shipped = shipped_subjects(benchmark).get(name, {})
    override = mapping.get(name, {})
    display = override.get("name") or shipped.get("name")
    category = override.get("category") or shipped.get("category") or FALLBACK_CATEGORY
    if display is None:
        display = name.replace("_", " ")
        known = f"megactllm's table of {benchmark} subjects" if shipped_subjects(benchmark) else "a shipped subject table"
        warnings.warn(
            f"{file}: subject {name!r} is in neither {known} nor {root / 'mapping.json'}; its prompt describes it "
            f"as {display!r} (from the file name), category {category!r}. Name it in mapping.json to change that",
            UnknownSubjectWarning, stacklevel=3)
    return display, category
