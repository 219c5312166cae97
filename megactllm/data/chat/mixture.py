"""Mixtures of SFT/DPO sources by ratio (e.g. CT-LLM's zh:en = 1:1, 2:1, 4:1, 8:1) and split into train/valid/test.

A blend uses Megatron's list form (megactllm.data.blend parses it): `["4", "data/sft_zh", "1",
"data/sft_en"]` mixes zh:en at 4:1, and `["data/a", "data/b"]` (no weights) simply takes every
sample of each source.

Ratio semantics for finite instruction sets: one epoch of the mixture uses as many samples as the
ratio allows without repeating any: the source that runs out first is used whole, the others are
sampled down (a seeded random subset) so that the counts follow the weights. With 1,000 zh and 999
en samples, 4:1 gives 1,000 zh + 250 en; 1:1 gives 999 zh + 999 en.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from megactllm.data.blend import BlendError


def mixture_counts(sizes: Sequence[int], weights: Sequence[float] | None) -> list[int]:
    """Samples to take from each source: all of them without weights, else the largest counts in
    the weights' proportion that no source has to repeat."""
    if weights is None:
        return list(sizes)
    total = sum(weights)
    shares = [w / total for w in weights]
    usable = [n / s for n, s in zip(sizes, shares) if s > 0]
    epoch = min(usable) if usable else 0
    return [min(n, round(s * epoch)) for n, s in zip(sizes, shares)]


def mixture_samples(sizes: Sequence[int], weights: Sequence[float] | None, seed: int) -> np.ndarray:
    """[n, 2] array of (source, sample) picked for one epoch, in a seeded shuffled order."""
    rng = np.random.default_rng(seed)
    picks = []
    for source, (size, count) in enumerate(zip(sizes, mixture_counts(sizes, weights))):
        chosen = np.sort(rng.permutation(size)[:count]) if count < size else np.arange(size)
        picks.append(np.stack([np.full(count, source), chosen], axis=1))
    samples = np.concatenate(picks) if picks else np.zeros((0, 2), np.int64)
    return samples[rng.permutation(len(samples))].astype(np.int64)


def split_samples(samples: np.ndarray, split: str) -> list[np.ndarray]:
    """Train/valid/test parts of a sample list by Megatron's split string ("969,30,1")."""
    parts = [float(x) for x in str(split).replace("/", ",").split(",")]
    parts += [0.0] * (3 - len(parts))
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise BlendError(f"split {split!r} must be up to three non-negative numbers, e.g. '969,30,1'")
    bounds = np.round(np.cumsum([0.0] + parts) / sum(parts) * len(samples)).astype(int)
    return [samples[bounds[i] : bounds[i + 1]] for i in range(3)]
