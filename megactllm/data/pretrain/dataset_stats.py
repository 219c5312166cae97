"""What is inside a tokenized dataset: counts, a document-length histogram, decoded samples.

    stats = dataset_stats("data/zh_text_document")
    print(format_stats(stats, tokenizer, samples=3))
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megactllm.data.pretrain.indexed import IndexedDatasetReader


@dataclass
class DatasetStats:
    prefix: str
    dtype: str
    documents: int
    sequences: int
    tokens: int
    max_id: int
    length_percentiles: dict  # "min", "p50", "p90", "p99", "max" -> tokens
    mean_length: float
    histogram: list  # (low, high, count): document lengths in power-of-two buckets
    metadata: dict | None


def dataset_stats(prefix: str) -> DatasetStats:
    reader = IndexedDatasetReader(prefix)
    lengths = reader.document_lengths()
    if len(lengths):
        pct = np.percentile(lengths, [0, 50, 90, 99, 100])
        percentiles = dict(zip(("min", "p50", "p90", "p99", "max"), (int(x) for x in pct)))
        top = int(lengths.max())
    else:
        percentiles, top = {}, 0
    histogram = []
    low = 0
    high = 1
    while low <= top and len(lengths):
        count = int(((lengths >= low) & (lengths < high)).sum())
        histogram.append((low, high, count))
        low, high = high, high * 2
    while histogram and histogram[0][2] == 0:  # start at the shortest documents present
        histogram.pop(0)
    max_id = int(reader._bin.max()) if reader.num_tokens else -1
    return DatasetStats(
        prefix=reader.prefix, dtype=str(reader.dtype), documents=reader.num_documents, sequences=reader.num_sequences,
        tokens=reader.num_tokens, max_id=max_id, length_percentiles=percentiles,
        mean_length=float(lengths.mean()) if len(lengths) else 0.0, histogram=histogram, metadata=reader.metadata,
    )


def format_stats(stats: DatasetStats, tokenizer=None, samples: int = 3, max_chars: int = 300, seed: int = 0) -> str:
    lines = [
        f"dataset   {stats.prefix}",
        f"dtype     {stats.dtype}",
        f"documents {stats.documents:,}   sequences {stats.sequences:,}   tokens {stats.tokens:,}   max id {stats.max_id:,}",
    ]
    if stats.metadata:
        meta = stats.metadata
        lines.append(f"tokenizer {meta.get('tokenizer_type')} {meta.get('model_path')} (vocab {meta.get('vocab_size')}), "
                     f"append_eod={meta.get('append_eod')}")
    if tokenizer is not None and stats.max_id >= tokenizer.vocab_size:
        lines.append(f"WARNING: max id {stats.max_id} is outside the tokenizer's vocabulary of {tokenizer.vocab_size}")
    if stats.length_percentiles:
        p = stats.length_percentiles
        lines.append(f"doc length mean {stats.mean_length:,.1f}   min {p['min']:,}  p50 {p['p50']:,}  p90 {p['p90']:,}  "
                     f"p99 {p['p99']:,}  max {p['max']:,}")
        lines.append("length histogram (tokens per document):")
        peak = max(c for _, _, c in stats.histogram) or 1
        for low, high, count in stats.histogram:
            bar = "#" * max(1 if count else 0, round(40 * count / peak))
            lines.append(f"  [{low:>7,}, {high:>7,})  {count:>10,}  {bar}")
    if tokenizer is not None and samples and stats.documents:
        reader = IndexedDatasetReader(stats.prefix)
        rng = np.random.default_rng(seed)
        picks = sorted(rng.choice(stats.documents, size=min(samples, stats.documents), replace=False))
        lines.append("samples:")
        for d in picks:
            tokens = reader.document(int(d))
            text = tokenizer.decode(tokens.tolist())
            shown = text if len(text) <= max_chars else text[:max_chars] + " ..."
            lines.append(f"  [doc {d}, {len(tokens)} tokens, ids {tokens[:8].tolist()}{' ...' if len(tokens) > 8 else ''}]")
            lines.append("    " + shown.replace("\n", "\\n"))
    return "\n".join(lines)
