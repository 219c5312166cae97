"""MinHash signatures and LSH band hashes over character n-grams (C++: csrc/minhash.cpp)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .config import DedupConfig


@lru_cache(maxsize=1)
def native():
    try:
        from megactllm import _minhash
    except ImportError as e:
        raise ImportError("megactllm._minhash (csrc/minhash.cpp) is not built: run "
                          "`pip install -e . --no-build-isolation` in the repository root") from e
    return _minhash


def signatures(texts: list[str], cfg: DedupConfig) -> np.ndarray:
    """uint32 (len(texts), num_perm); an empty text gets all 0xFFFFFFFF."""
    return native().signatures(list(texts), cfg.ngram, cfg.num_perm, cfg.seed, cfg.threads)


def band_hashes(sigs: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """uint64 (n, bands): documents sharing any band value are near-duplicate candidates."""
    return native().band_hashes(sigs, cfg.bands, cfg.rows)


def collision_probability(jaccard: float, bands: int, rows: int) -> float:
    """Chance that two documents with this Jaccard similarity share at least one band."""
    return 1.0 - (1.0 - jaccard ** rows) ** bands


def lsh_threshold(bands: int, rows: int) -> float:
    """Jaccard similarity at which the S-curve crosses 1/2, roughly (1/bands)^(1/rows)."""
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if collision_probability(mid, bands, rows) < 0.5 else (lo, mid)
    return (lo + hi) / 2
