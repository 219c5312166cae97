"""MinHash-LSH dedup: correctness of the C++ pieces, and recall/precision on perturbed real text."""
import random

import numpy as np
import pytest

from megactllm.clean.config import DedupConfig
from megactllm.clean.dedup import bucket_edges, cluster_size_histogram, clusters
from megactllm.clean.minhash import band_hashes, collision_probability, lsh_threshold, native, signatures


def real_docs(shared_data, min_chars=50):
    lines = (shared_data / "corpus" / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines()
    return [x for x in lines if len(x) >= min_chars]


def perturb(text: str, rate: float, rng: random.Random) -> str:
    """Change `rate` of the characters at scattered positions: substitute, insert or delete."""
    chars = list(text)
    for pos in sorted(rng.sample(range(len(chars)), max(1, round(rate * len(chars)))), reverse=True):
        op = rng.random()
        new = chr(rng.randint(0x4E00, 0x9FA5))
        if op < 0.6:
            chars[pos] = new
        elif op < 0.8:
            chars.insert(pos, new)
        else:
            del chars[pos]
    return "".join(chars)


def shingles(text, n):
    return {text[i:i + n] for i in range(max(1, len(text) - n + 1))}


def test_signature_estimates_jaccard(shared_data):
    docs = real_docs(shared_data, 300)[:40]
    rng = random.Random(1)
    cfg = DedupConfig()
    pairs = [(d, perturb(d, rng.uniform(0.02, 0.2), rng)) for d in docs]
    sa = signatures([a for a, _ in pairs], cfg)
    sb = signatures([b for _, b in pairs], cfg)
    est = (sa == sb).mean(axis=1)
    true = np.array([len(shingles(a, 5) & shingles(b, 5)) / len(shingles(a, 5) | shingles(b, 5)) for a, b in pairs])
    # 128 permutations: standard error about 0.044; the mean error must be near zero.
    assert np.abs(est - true).max() < 0.2
    assert abs((est - true).mean()) < 0.03


def test_signature_basics():
    cfg = DedupConfig(ngram=3, num_perm=16, bands=4, rows=4)
    s = signatures(["", "ab", "abcdef", "abcdef", "ABCDEF"], cfg)
    assert s.dtype == np.uint32 and s.shape == (5, 16)
    assert (s[0] == 0xFFFFFFFF).all()  # empty: no n-grams
    assert (s[2] == s[3]).all() and not (s[2] == s[4]).all()
    assert not (s[1] == 0xFFFFFFFF).all()  # shorter than n: one shingle of the whole text
    assert (signatures(["abcdef"] * 3, DedupConfig(ngram=3, num_perm=16, threads=2)) == s[2]).all()
    b = band_hashes(s, cfg)
    assert b.shape == (5, 4) and (b[2] == b[3]).all()
    with pytest.raises(ValueError):
        band_hashes(s, DedupConfig(ngram=3, num_perm=16, bands=5, rows=4))


def test_bucket_edges_and_union_find():
    hashes = np.array([7, 3, 7, 9, 3, 7], np.uint64)
    a, b = bucket_edges(hashes, np.arange(6, dtype=np.int64))
    assert sorted(zip(a.tolist(), b.tolist())) == [(0, 2), (0, 5), (1, 4)]
    roots = native().union_find(6, np.array([5, 3]), np.array([4, 1]))
    assert roots.tolist() == [0, 1, 2, 1, 4, 4]
    exact_roots, roots = clusters(6, (np.array([0]), np.array([2])), (np.array([2, 4]), np.array([5, 1])))
    assert exact_roots.tolist() == [0, 1, 0, 3, 4, 5]
    assert roots.tolist() == [0, 1, 0, 3, 1, 0]
    assert cluster_size_histogram(roots) == {2: 1, 3: 1}
    with pytest.raises(IndexError):
        native().union_find(3, np.array([0]), np.array([3]))


def test_lsh_curve():
    assert 0.5 < lsh_threshold(20, 5) < 0.6
    assert 0.8 < lsh_threshold(9, 13) < 0.9  # MAP-CC's banding
    assert collision_probability(0.75, 20, 5) > 0.99


def test_near_duplicates_found_at_default_threshold(shared_data):
    """Copies of real documents with 1-3% of characters changed: recall >= 0.95 and
    precision >= 0.99 with the default configuration."""
    docs = real_docs(shared_data)
    rng = random.Random(0)
    picked = rng.sample(range(len(docs)), 600)
    copies = [perturb(docs[i], rng.uniform(0.01, 0.03), rng) for i in picked]
    corpus = docs + copies
    cfg = DedupConfig()
    bands = band_hashes(signatures(corpus, cfg), cfg)
    ids = np.arange(len(corpus), dtype=np.int64)
    edges = [bucket_edges(bands[:, j], ids) for j in range(cfg.bands)]
    near = (np.concatenate([e[0] for e in edges]), np.concatenate([e[1] for e in edges]))
    none = (np.empty(0, np.int64), np.empty(0, np.int64))
    _, roots = clusters(len(corpus), none, near)
    original_of = {len(docs) + k: i for k, i in enumerate(picked)}
    found = sum(roots[c] == roots[o] for c, o in original_of.items())
    removed = np.flatnonzero(roots != ids)
    correct = sum(1 for r in removed if r in original_of and roots[r] == roots[original_of[r]])
    recall, precision = found / len(copies), correct / len(removed)
    print(f"recall {recall:.3f} precision {precision:.3f} ({len(removed)} removed)")
    assert recall >= 0.95
    assert precision >= 0.99
