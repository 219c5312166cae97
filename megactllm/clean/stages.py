"""The stages, each a function of (workdir, unit) that writes its unit's files atomically.

filter   per shard: normalise, page/line/content rules -> kept docs, removed side output, stats
minhash  per shard: signatures, LSH band hashes and exact text hashes of the kept docs
lsh      per band (and one unit for exact hashes): candidate pairs from shared buckets
cluster  one unit: union-find over all pairs -> which documents are duplicates of which
dedup    per shard: final kept docs; duplicates to the side output
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from megactllm.common.atomic import atomic_write, write_json_atomic
from megactllm.common.jsonl import atomic_jsonl_writer

from .dedup import bucket_edges, cluster_size_histogram, clusters, text_hash, verify_edges
from .minhash import band_hashes, signatures
from .pipeline import Cleaner
from .progress import Progress
from .records import BadRecord, read_jsonl, read_shard
from .stats import add_bad, add_line_removals, add_removed, new_stats
from .workdir import Workdir

SIGNATURE_BATCH = 2048


def filter_unit(wd: Workdir, unit: int) -> dict:
    cfg = wd.cfg
    path = wd.shards()[unit]
    cleaner = Cleaner(cfg)
    stats = new_stats()
    n_ex = cfg.run.examples_per_rule
    text_key, id_key = cfg.input.text_key, cfg.input.id_key
    progress = Progress(f"filter {Path(path).name}", os.path.getsize(path), cfg.run.progress_interval_s)
    with atomic_jsonl_writer(wd.path("filter", unit, ".kept.jsonl")) as kept, \
            atomic_jsonl_writer(wd.path("filter", unit, ".removed.jsonl")) as removed:
        for rec in read_shard(path, cfg.input):
            stats["input_docs"] += 1
            stats["input_bytes"] += rec.nbytes
            progress.update(1, rec.nbytes)
            if isinstance(rec, BadRecord):
                add_bad(stats, rec.reason, rec.nbytes, rec.where, rec.detail, n_ex)
                # Bad input always goes to the side output: it is never silently lost.
                removed.write_json({"rule": rec.reason, "where": rec.where, "detail": rec.detail, "raw": rec.raw})
                continue
            stats["input_chars"] += len(rec.text)
            try:
                out = cleaner.clean(rec.text, rec.url)
            except Exception as e:  # one odd document must not end a day-long job; it is reported
                detail = f"{type(e).__name__}: {e}"
                add_bad(stats, "cleaner_error", rec.nbytes, rec.where, detail, n_ex)
                removed.write_json({"rule": "cleaner_error", "where": rec.where, "detail": detail, "raw": rec.text})
                continue
            add_line_removals(stats, out.removed_lines, out.removed_chars)
            if out.rule is None:
                obj = dict(rec.fields) if rec.fields else {}
                obj[text_key] = out.text
                obj.setdefault(id_key, rec.key)
                kept.write_json(obj)
                stats["kept_docs"] += 1
                stats["kept_chars"] += len(out.text)
                continue
            value = out.value if isinstance(out.value, (int, float, str)) or out.value is None else str(out.value)
            example = {"id": rec.key, "where": rec.where, "value": value, "text": rec.text}
            add_removed(stats, out.rule, len(rec.text), example, n_ex)
            if cfg.run.keep_removed:
                removed.write_json({"rule": out.rule, "value": value, "id": rec.key, "where": rec.where,
                                    "url": rec.url, text_key: rec.text})
    write_json_atomic(wd.path("filter", unit, ".stats.json"), stats, indent=1)
    return {"docs": stats["input_docs"], "bytes": stats["input_bytes"]}


def minhash_unit(wd: Workdir, unit: int) -> dict:
    cfg = wd.cfg
    text_key = cfg.input.text_key
    rows = list(read_jsonl(wd.path("filter", unit, ".kept.jsonl")))
    texts = [obj[text_key] for obj in rows]
    d = cfg.dedup
    n = len(texts)
    exact = np.fromiter((text_hash(t) for t in texts), np.uint64, n)
    valid = np.fromiter((len(t) > 0 for t in texts), bool, n)  # empty text has no n-grams
    # Ids let the dedup stage name the document each duplicate was kept in favour of.
    ids = np.array([str(obj.get(cfg.input.id_key)) for obj in rows] or [""], dtype=str)[:n]
    arrays = {"exact": exact, "valid": valid, "ids": ids}
    if d.fuzzy:
        sigs = np.concatenate([signatures(texts[i:i + SIGNATURE_BATCH], d)
                               for i in range(0, n, SIGNATURE_BATCH)]) if n else np.empty((0, d.num_perm), np.uint32)
        arrays["bands"] = band_hashes(sigs, d) if n else np.empty((0, d.bands), np.uint64)
        if d.verify_threshold is not None:
            arrays["sigs"] = sigs
    with atomic_write(wd.path("minhash", unit, ".npz"), "wb") as f:
        np.savez(f, **arrays)
    return {"docs": n, "bytes": sum(len(t.encode("utf-8")) for t in texts)}


def _load_minhash(wd: Workdir, key: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The array `key` of every shard, and each shard's first global document id."""
    parts = []
    for unit in range(len(wd.shards())):
        with np.load(wd.path("minhash", unit, ".npz")) as z:
            parts.append(z[key])
    offsets = np.cumsum([0] + [len(p) for p in parts])
    return parts, offsets


def lsh_units(wd: Workdir) -> int:
    """One unit per band, plus a last one for exact dedup."""
    return (wd.cfg.dedup.bands if wd.cfg.dedup.fuzzy else 0) + 1


def lsh_unit(wd: Workdir, unit: int) -> dict:
    d = wd.cfg.dedup
    is_exact = unit == lsh_units(wd) - 1
    valid_parts, offsets = _load_minhash(wd, "valid")
    valid = np.concatenate(valid_parts) if valid_parts else np.zeros(0, bool)
    ids = np.flatnonzero(valid).astype(np.int64)  # empty texts have no n-grams to compare
    if is_exact:
        if d.exact:
            parts, _ = _load_minhash(wd, "exact")
            ids = np.arange(len(valid), dtype=np.int64)
            a, b = bucket_edges(np.concatenate(parts), ids)
        else:
            a = b = np.empty(0, np.int64)
    else:
        parts, _ = _load_minhash(wd, "bands")
        a, b = bucket_edges(np.concatenate([p[:, unit] for p in parts])[ids], ids)
        if d.verify_threshold is not None and len(a):
            sigs = np.concatenate(_load_minhash(wd, "sigs")[0])
            keep = verify_edges(a, b, sigs[a], sigs[b], d.verify_threshold)
            a, b = a[keep], b[keep]
    with atomic_write(wd.path("lsh", unit, ".npz"), "wb") as f:
        np.savez(f, a=a, b=b, offsets=offsets)
    return {"docs": len(ids), "bytes": 0}


def cluster_unit(wd: Workdir, unit: int) -> dict:
    n_units = lsh_units(wd)
    exact, near = ([], []), ([], [])
    offsets = None
    for u in range(n_units):
        with np.load(wd.path("lsh", u, ".npz")) as z:
            target = exact if u == n_units - 1 else near
            target[0].append(z["a"])
            target[1].append(z["b"])
            offsets = z["offsets"]
    n = int(offsets[-1])

    def cat(pair):
        return np.concatenate(pair[0]).astype(np.int64), np.concatenate(pair[1]).astype(np.int64)

    exact_roots, roots = clusters(n, cat(exact), cat(near))
    ids = np.arange(n)
    # 0 = kept, 1 = exact duplicate, 2 = near duplicate
    reason = np.where(exact_roots != ids, 1, np.where(roots != ids, 2, 0)).astype(np.int8)
    with atomic_write(wd.path("cluster", unit, ".npz"), "wb") as f:
        np.savez(f, reason=reason, roots=roots, offsets=offsets)
    write_json_atomic(wd.path("cluster", unit, ".stats.json"), {
        "documents": n, "exact_duplicates": int((reason == 1).sum()), "near_duplicates": int((reason == 2).sum()),
        "cluster_size_histogram": cluster_size_histogram(roots),
        "exact_cluster_size_histogram": cluster_size_histogram(exact_roots)}, indent=1)
    return {"docs": n, "bytes": 0}


DEDUP_RULES = {1: "exact_dup", 2: "near_dup"}


def dedup_unit(wd: Workdir, unit: int) -> dict:
    cfg = wd.cfg
    with np.load(wd.path("cluster", 0, ".npz")) as z:
        offsets = z["offsets"]
        lo, hi = int(offsets[unit]), int(offsets[unit + 1])
        reason, roots = z["reason"][lo:hi], z["roots"][lo:hi]

    ids_of: dict[int, np.ndarray] = {}

    def id_of(global_id: int) -> str:
        shard = int(np.searchsorted(offsets, global_id, side="right") - 1)
        if shard not in ids_of:
            with np.load(wd.path("minhash", shard, ".npz")) as z:
                ids_of[shard] = z["ids"]
        return str(ids_of[shard][global_id - offsets[shard]])

    stats = new_stats()
    text_key, id_key = cfg.input.text_key, cfg.input.id_key
    nbytes = 0
    with atomic_jsonl_writer(wd.path("dedup", unit, ".jsonl")) as kept, \
            atomic_jsonl_writer(wd.path("dedup", unit, ".removed.jsonl")) as removed:
        for row, obj in enumerate(read_jsonl(wd.path("filter", unit, ".kept.jsonl"))):
            text = obj[text_key]
            stats["input_docs"] += 1
            stats["input_chars"] += len(text)
            nbytes += len(text)
            if reason[row] == 0:
                kept.write_json(obj)
                stats["kept_docs"] += 1
                stats["kept_chars"] += len(text)
                continue
            rule = DEDUP_RULES[int(reason[row])]
            dup_of = id_of(int(roots[row]))
            add_removed(stats, rule, len(text), {"id": obj.get(id_key), "duplicate_of": dup_of, "text": text},
                        cfg.run.examples_per_rule)
            if cfg.run.keep_removed:
                removed.write_json({"rule": rule, "id": obj.get(id_key), "duplicate_of": dup_of, text_key: text})
    write_json_atomic(wd.path("dedup", unit, ".stats.json"), stats, indent=1)
    return {"docs": stats["input_docs"], "bytes": nbytes}
