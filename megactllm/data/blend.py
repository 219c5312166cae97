"""One data blend: the `data.data_path` syntax shared by pretraining, SFT and DPO, and its checks.

A blend is written Megatron's way: weight/prefix pairs `["0.6", "zh", "0.4", "en"]` (or the same
as one string, "0.6 zh 0.4 en", or one "0.6 zh" pair per list item), or prefixes alone
`["zh", "en"]` / "zh". What the weights mean is the user's business: megatron-core samples a
pretraining blend by them, the chat mixture takes counts in their proportion
(megactllm.data.chat.mixture).

Every entry is checked here, once, with the config field and the entry named in the error:
weights are finite numbers >= 0 with a positive sum, every weight has its prefix (pairs are
complete), a prefix is not a number, and (check_files) each prefix has its .bin and .idx.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from megactllm.data.pretrain.indexed import DatasetFormatError, dataset_exists
from megactllm.errors import UserError


class BlendError(UserError, ValueError):
    """A data blend that cannot be used as written."""


class MissingDatasetError(BlendError, DatasetFormatError):
    """A blend entry whose dataset files are not there."""


@dataclass(frozen=True)
class Blend:
    prefixes: tuple[str, ...]
    weights: Optional[tuple[float, ...]]  # None: unweighted (megatron weighs by size; a mixture takes all)

    def as_megatron(self) -> tuple:
        """(prefixes, weights) as the lists megatron-core's dataset config takes."""
        return (list(self.prefixes), None if self.weights is None else list(self.weights))

    def normalized_weights(self) -> list:
        if self.weights is None:
            return [1.0 / len(self.prefixes)] * len(self.prefixes)
        total = sum(self.weights)
        return [w / total for w in self.weights]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_blend(spec, where: str = "data.data_path") -> Optional[Blend]:
    """`["0.6", "zh", "0.4", "en"]`, "0.6 zh 0.4 en", ["zh", "en"] or "zh" -> Blend; empty -> None."""
    if spec is None:
        return None
    items = spec.split() if isinstance(spec, str) else [str(x) for x in spec]
    # A YAML list may hold "0.6 zh" pairs in one string each; flatten them.
    items = [part for item in items for part in item.split()]
    if not items:
        return None
    if not any(_is_number(x) for x in items):
        return Blend(tuple(items), None)
    if len(items) % 2:
        raise BlendError(f"{where}: a weighted blend alternates weight and prefix, got an odd count: {items}")
    weights, prefixes = items[0::2], items[1::2]
    for number, (w, p) in enumerate(zip(weights, prefixes)):
        if not _is_number(w):
            raise BlendError(f"{where}: expected a weight before prefix {p!r}, got {w!r} "
                             f"(entry {2 * number}); a blend is all weight/prefix pairs or all prefixes")
        if _is_number(p):
            raise BlendError(f"{where}: expected a dataset prefix after weight {w}, got the number {p!r}")
        if not math.isfinite(float(w)):
            raise BlendError(f"{where}: the weight of {p!r} is {w!r}; weights are finite numbers")
    values = tuple(float(w) for w in weights)
    negative = [(p, v) for p, v in zip(prefixes, values) if v < 0]
    if negative or sum(values) <= 0:
        which = f" ({negative[0][0]!r} has {negative[0][1]})" if negative else ""
        raise BlendError(f"{where}: weights must be >= 0 with a positive sum, got {list(values)}{which}")
    return Blend(tuple(prefixes), values)


def require_blend(spec, where: str = "data.data_path") -> Blend:
    """parse_blend for a field that must name data."""
    blend = parse_blend(spec, where)
    if blend is None:
        raise BlendError(f"{where} is empty: give prefixes, or weight/prefix pairs like ['4', 'zh', '1', 'en']")
    return blend


def check_files(blend: Blend, where: str, build_with: str = "tools/preprocess_data.py") -> None:
    """Each prefix has its .bin and .idx, or the error names the field and the entry."""
    for prefix in blend.prefixes:
        if not dataset_exists(prefix):
            raise MissingDatasetError(f"{where}: dataset prefix {prefix!r} has no {prefix}.bin/{prefix}.idx; "
                                      f"build it with {build_with} or fix the path")
