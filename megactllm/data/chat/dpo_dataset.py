"""The DPO training dataset: one item per preference pair, both halves in the same item.

Items are dicts of numpy arrays shaped [2, seq_length] (row 0 = prompt+chosen, row 1 =
prompt+rejected): tokens, labels, loss_mask (response tokens only), position_ids, segment_ids.
Since a pair is one item, a micro-batch always holds both halves of each of its pairs. With
precomputed reference log-probabilities, items also carry `reference_logps` [2] (chosen, rejected).
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from megactllm.common.atomic import atomic_write
from megactllm.data.chat.sft_dataset import build_split_samples, pad_id_of, with_epochs
from megactllm.data.chat.sft_indexed import ChatSampleReader
from megactllm.data.chat.packing import build_row

REFERENCE_FORMAT_VERSION = 1


class ReferenceLogps:
    """Reference sequence log-probs per (source prefix, pair): an .npz of [n_pairs, 2] arrays + metadata."""

    def __init__(self, path: str) -> None:
        with np.load(path) as f:
            self.meta = json.loads(str(f["meta"]))
            self.arrays = {p: f[f"logps_{k}"] for k, p in enumerate(self.meta["prefixes"])}
        self.path = path

    def for_source(self, reader: ChatSampleReader, seq_length: int) -> np.ndarray:
        if self.meta.get("seq_length") != seq_length:
            raise ValueError(f"{self.path} was computed at seq_length {self.meta.get('seq_length')}, "
                             f"training uses {seq_length}: recompute the reference log-probs")
        if reader.prefix not in self.arrays:
            raise ValueError(f"{self.path} has no reference log-probs for {reader.prefix} (it has {sorted(self.arrays)})")
        logps = self.arrays[reader.prefix]
        if len(logps) != len(reader):
            raise ValueError(f"{self.path} holds {len(logps)} pairs for {reader.prefix}, which has {len(reader)}")
        return logps


def save_reference_logps(path: str, prefixes: Sequence[str], logps: Sequence[np.ndarray], meta: dict) -> None:
    meta = dict(meta, prefixes=list(prefixes), format_version=REFERENCE_FORMAT_VERSION)
    arrays = {f"logps_{k}": np.asarray(a, dtype=np.float64) for k, a in enumerate(logps)}
    with atomic_write(path, "wb") as f:
        np.savez(f, meta=json.dumps(meta), **arrays)


class DPODataset:
    def __init__(self, sources: Sequence[ChatSampleReader], samples: np.ndarray, seq_length: int, pad_id: int,
                 reference: ReferenceLogps | None = None) -> None:
        self.sources, self.samples = list(sources), np.asarray(samples, dtype=np.int64).reshape(-1, 2)
        self.seq_length, self.pad_id = seq_length, pad_id
        self.reference = [reference.for_source(r, seq_length) for r in self.sources] if reference else None
        longest = np.array([max(self.sources[s].lengths(0)[i], self.sources[s].lengths(2)[i]) for s, i in self.samples])
        self.truncated_at_load = int((longest > seq_length + 1).sum())

    def __len__(self) -> int:
        return len(self.samples)

    def pair(self, source: int, index: int) -> dict[str, np.ndarray]:
        s = self.sources[source].sample(index)
        keep = self.seq_length + 1
        rows = [build_row([(s[f"{h}_tokens"][:keep], s[f"{h}_mask"][:keep])], self.seq_length, self.pad_id)
                for h in ("chosen", "rejected")]
        return {k: np.stack([rows[0][k], rows[1][k]]) for k in rows[0]}

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        source, index = (int(x) for x in self.samples[i])
        item = self.pair(source, index)
        if self.reference is not None:
            logps = self.reference[source][index]
            if not np.all(np.isfinite(logps)):
                raise ValueError(f"no reference log-probs for pair {index} of {self.sources[source].prefix}")
            item["reference_logps"] = logps.astype(np.float32)
        return item

    def describe(self) -> str:
        return f"{len(self)} pairs, rows of {self.seq_length}, {self.truncated_at_load} truncated at load"


def build_dpo_datasets(cfg, tokenizer) -> tuple:
    reference = ReferenceLogps(cfg.dpo.reference_logprobs) if cfg.dpo.reference_logprobs else None
    datasets = []
    for spec in build_split_samples(cfg.data, "dpo", cfg.train.seed, tokenizer):
        datasets.append(None if spec is None else DPODataset(spec[0], spec[1], cfg.model.seq_length, pad_id_of(tokenizer), reference))
    return with_epochs(tuple(datasets), cfg.train)
