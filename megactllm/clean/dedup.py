"""Candidate pairs from LSH buckets, and clusters from union-find.

A bucket is a set of documents sharing one band hash (or, for exact dedup, one text hash).
Each bucket becomes a star of edges to its first member; union-find then joins stars from
all bands into near-duplicate clusters, and each cluster keeps its first document.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .minhash import native


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def bucket_edges(hashes: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first member, other member) for every document that shares its hash with an earlier one.
    `ids` must be increasing, so a stable sort keeps each bucket's smallest id first."""
    if len(hashes) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(hashes, kind="stable")
    h = hashes[order]
    starts = np.r_[True, h[1:] != h[:-1]]
    group_first = np.maximum.accumulate(np.where(starts, np.arange(len(h)), 0))
    member = ~starts
    return ids[order][group_first[member]], ids[order][member]


def verify_edges(a: np.ndarray, b: np.ndarray, sig_a: np.ndarray, sig_b: np.ndarray,
                 threshold: float) -> np.ndarray:
    """Mask of candidate pairs whose estimated Jaccard similarity reaches threshold."""
    return (sig_a == sig_b).mean(axis=1) >= threshold if len(a) else np.zeros(0, bool)


def clusters(n: int, exact: tuple[np.ndarray, np.ndarray], near: tuple[np.ndarray, np.ndarray]):
    """(root per document after exact dedup, root per document after exact+near dedup).
    A root is the smallest id of its cluster; every other member is removed."""
    uf = native().union_find
    exact_roots = uf(n, exact[0], exact[1])
    all_roots = uf(n, np.r_[exact[0], near[0]], np.r_[exact[1], near[1]])
    return exact_roots, all_roots


def cluster_size_histogram(roots: np.ndarray) -> dict[int, int]:
    """{cluster size: number of clusters} for clusters of two or more documents."""
    sizes = np.bincount(roots, minlength=len(roots))
    sizes = sizes[sizes > 1]
    values, counts = np.unique(sizes, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}
