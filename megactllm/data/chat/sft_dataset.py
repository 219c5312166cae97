"""The SFT training dataset: a ratio mixture of preprocessed sources, split, packed into rows.

Items are dicts of equal-shaped numpy arrays [seq_length]: tokens, labels, loss_mask, position_ids,
segment_ids (see megactllm.data.chat.packing). Everything is decided at construction from the seed,
so every rank builds the same rows in the same order.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from megactllm.data.chat.sft_indexed import ChatSampleReader
from megactllm.data.blend import Blend, check_files, require_blend
from megactllm.data.chat.mixture import mixture_samples, split_samples
from megactllm.data.chat.packing import build_row, pack_rows

log = logging.getLogger(__name__)


def open_sources(blend: Blend, kind: str, tokenizer=None) -> list[ChatSampleReader]:
    readers = [ChatSampleReader(p, kind) for p in blend.prefixes]
    if tokenizer is not None:
        for r in readers:
            r.check_tokenizer(tokenizer)
    return readers


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eod_id


class SFTDataset:
    """Rows of one split. `samples` is an [n, 2] array of (source, sample index) in training order."""

    def __init__(self, sources: Sequence[ChatSampleReader], samples: np.ndarray, seq_length: int, packing: bool, pad_id: int) -> None:
        self.sources, self.samples = list(sources), np.asarray(samples, dtype=np.int64).reshape(-1, 2)
        self.seq_length, self.packing, self.pad_id = seq_length, packing, pad_id
        lengths = np.array([self.sources[s].lengths()[i] for s, i in self.samples], dtype=np.int64)
        # Data preprocessed for a longer sequence is cut from the right here, as preprocessing would.
        self.truncated_at_load = int((lengths > seq_length + 1).sum())
        if self.truncated_at_load:
            log.warning("%d SFT samples are longer than seq_length %d + 1 and are truncated from the right", self.truncated_at_load, seq_length)
        positions = np.minimum(lengths, seq_length + 1) - 1
        self.rows = pack_rows(positions, seq_length) if packing else [[i] for i in range(len(self.samples))]
        self.fill = float(positions.sum()) / max(1, len(self.rows) * seq_length)

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, loss_mask) of the k-th sample of this split, truncated to seq_length + 1."""
        source, index = self.samples[k]
        s = self.sources[source].sample(int(index))
        return s["tokens"][: self.seq_length + 1], s["loss_mask"][: self.seq_length + 1]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return build_row([self.sample(k) for k in self.rows[i]], self.seq_length, self.pad_id)

    def describe(self) -> str:
        mode = "packed" if self.packing else "one sample per row"
        return (f"{len(self.samples)} samples in {len(self)} rows of {self.seq_length} ({mode}, "
                f"{self.fill:.0%} filled, {self.truncated_at_load} truncated at load)")


class EpochDataset:
    """`epochs` passes over a finite dataset, reshuffled each pass, as one index space.

    Its length is rounded up to whole global batches (the last batch borrows from the next pass),
    so a run of ceil(epochs * samples_per_epoch / global_batch_size) steps never runs dry.
    """

    def __init__(self, base, epochs: float, global_batch_size: int, seed: int) -> None:
        if epochs <= 0:  # train.duration is checked by the recipe: a caller's bug
            raise ValueError(f"epochs must be positive, got {epochs}")
        self.base, self.samples_per_epoch, self.seed = base, len(base), seed
        steps = -(-int(np.ceil(epochs * self.samples_per_epoch)) // global_batch_size)
        self.length = steps * global_batch_size
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            # Pass 0 keeps the base order (already shuffled); later passes are seeded permutations.
            n = self.samples_per_epoch
            self._orders[epoch] = np.arange(n) if epoch == 0 else np.random.default_rng((self.seed, epoch)).permutation(n)
        return self._orders[epoch]

    def __getitem__(self, i: int):
        if not 0 <= i < self.length:
            raise IndexError(f"sample {i} is outside the {self.length} samples of the run's epochs")
        epoch, k = divmod(int(i), self.samples_per_epoch)
        return self.base[int(self._order(epoch)[k])]

    def describe(self) -> str:
        inner = self.base.describe() if hasattr(self.base, "describe") else f"{self.samples_per_epoch} samples"
        return f"{self.length / self.samples_per_epoch:.2f} epochs of {inner}"


def with_epochs(datasets: tuple, train_cfg) -> tuple:
    """The train split wrapped for train.duration in epochs; valid/test stay single passes."""
    train, d = datasets[0], train_cfg.duration
    if train is not None and d is not None and d.unit == "epochs":
        train = EpochDataset(train, d.value, train_cfg.global_batch_size, train_cfg.seed)
    return (train,) + tuple(datasets[1:])


def split_blends(data_cfg) -> list[tuple[Blend, str | None] | None]:
    """(blend, split part) per split: separate train/valid/test blends, or one blend cut by data.split."""
    if data_cfg.train_data_path:
        fields = ("train_data_path", "valid_data_path", "test_data_path")
        return [(_checked_blend(getattr(data_cfg, f), f"data.{f}"), None) if getattr(data_cfg, f) else None
                for f in fields]
    if not data_cfg.data_path:
        raise ValueError("no SFT/DPO data: set data.train_data_path (or data.data_path with data.split)")
    return [(_checked_blend(data_cfg.data_path, "data.data_path"), data_cfg.split)] * 3


def _checked_blend(spec, where: str) -> Blend:
    blend = require_blend(spec, where)
    check_files(blend, where, build_with="tools/preprocess_sft.py or tools/preprocess_dpo.py")
    return blend


def build_split_samples(data_cfg, kind: str, seed: int, tokenizer=None) -> list[tuple[list, np.ndarray] | None]:
    """(sources, samples) for train/valid/test from the data config's blends."""
    out = []
    for part, spec in enumerate(split_blends(data_cfg)):
        if spec is None:
            out.append(None)
            continue
        blend, split = spec
        sources = open_sources(blend, kind, tokenizer)
        samples = mixture_samples([len(r) for r in sources], blend.weights, seed + (0 if split else part))
        if split is not None:
            samples = split_samples(samples, split)[part]
        out.append((sources, samples) if len(samples) else None)
    return out


def build_sft_datasets(cfg, tokenizer) -> tuple:
    """Train, valid and test SFTDatasets for a Config (None for an empty or unset split)."""
    datasets = []
    for spec in build_split_samples(cfg.data, "sft", cfg.train.seed, tokenizer):
        datasets.append(None if spec is None else SFTDataset(spec[0], spec[1], cfg.model.seq_length, cfg.data.packing, pad_id_of(tokenizer)))
    return with_epochs(tuple(datasets), cfg.train)
