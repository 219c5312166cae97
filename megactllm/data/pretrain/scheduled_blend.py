"""The training samples of a blend schedule, built from megatron-core's own datasets.

For each dataset prefix of the schedule, one megatron-core GPTDataset (train split) is built,
sized for every phase that reads it. Each phase takes its own window of that dataset's shuffled
samples (so a dataset read in two phases continues its stream instead of repeating it) and blends
its windows with megatron-core's BlendedDataset, which gives the exact proportions at every
prefix of the phase (its greedy blending index) and caches its indices in data.data_cache_path
like any other blend. Global sample i of the run reads phase p = the last phase starting at or
before i, at index i - start_p.

Validation reads the valid split of the schedule's final phase (the mixture the run ends on).
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from collections import OrderedDict
from typing import Optional

import numpy as np

from megactllm.data.pretrain.blend_schedule import BlendSchedule
from megactllm.data.blend import Blend
from megactllm.data.pretrain.gpt_dataset import (
    MegatronTokenizerView,
    _check_split_ranges,
    _drop_unread_splits,
    build_gpt_datasets,
    check_prefixes,
    eod_and_vocab,
)

# megatron-core's own margin when it sizes the datasets under a blend (BlendedMegatronDatasetBuilder).
_SURPLUS = 1.005


def samples_needed(weight: float, phase_samples: int) -> int:
    """Samples a phase may draw from a dataset of normalized weight `weight` (megatron's rule, +1)."""
    return int(math.ceil(math.ceil(phase_samples * weight) * _SURPLUS)) + 1


class DatasetWindow:
    """Samples [offset, offset + length) of a megatron-core dataset, as a dataset of its own.

    Carries what BlendedDataset reads from its members (index_split, unique_identifiers), so the
    phase's blend indices are cached under a name that includes the window.
    """

    def __init__(self, base, offset: int, length: int):
        if offset + length > len(base):
            raise IndexError(f"window [{offset}, {offset + length}) exceeds {len(base)} samples of {base.dataset_path}")
        self.base = base
        self.offset = offset
        self.length = length
        self.index_split = base.index_split
        self.unique_identifiers = OrderedDict(
            [("class", type(self).__name__), ("base", base.unique_identifiers), ("offset", offset), ("length", length)]
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int) -> dict:
        # No bounds check on this hot path: BlendedDataset checks at build time that it draws at
        # most len(window) samples, and ScheduledBlendDataset checks a single window's phase range.
        return self.base[self.offset + idx]


class ScheduledBlendDataset:
    """Map-style training dataset of a run under a blend schedule.

    Items are megatron-core GPT samples plus `dataset_id`, the index of the sample's dataset in
    `schedule.prefixes` (one id space across phases).
    """

    def __init__(self, schedule: BlendSchedule, phase_datasets: list, phase_ids: list):
        self.schedule = schedule
        self.phase_datasets = phase_datasets
        self._starts = schedule.sample_starts()
        self._length = schedule.train_iters * schedule.global_batch_size
        self._ends = self._starts[1:] + [self._length]
        # Phase-local dataset_id -> schedule-wide id; None where they already agree.
        self._ids = [tuple(np.int16(i) for i in ids) for ids in phase_ids]
        self._maps = [None if list(ids) == list(range(len(ids))) else ids for ids in self._ids]
        # The phase of the last lookup: consecutive samples mostly share it, so no search is needed.
        self._select(0)

    def __len__(self) -> int:
        return self._length

    def locate(self, idx: int) -> tuple[int, int]:
        """(position of the phase in schedule.resolved, index inside that phase) of global sample idx."""
        if not 0 <= idx < self._length:
            raise IndexError(f"sample {idx} outside the scheduled run's {self._length} samples")
        p = bisect.bisect_right(self._starts, idx) - 1
        return p, idx - self._starts[p]

    def _select(self, idx: int) -> None:
        p, _ = self.locate(idx)
        self._lo, self._hi = self._starts[p], self._ends[p]
        self._dataset, self._map, self._only_id = self.phase_datasets[p], self._maps[p], self._ids[p][0]

    def __getitem__(self, idx: int) -> dict:
        if not self._lo <= idx < self._hi:
            self._select(idx)
        item = self._dataset[idx - self._lo]
        if "dataset_id" not in item:  # a one-dataset phase (no BlendedDataset)
            item["dataset_id"] = self._only_id
        elif self._map is not None:
            item["dataset_id"] = self._map[item["dataset_id"]]
        return item


def _gpt_config(data_cfg, prefix_blend: Blend, seq_length: int, seed: int, eod: int, vocab: int, dp_size: int):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=prefix_blend.as_megatron(),
        split=data_cfg.split,
        path_to_cache=data_cfg.data_cache_path,
        tokenizer=MegatronTokenizerView(eod, vocab),
        reset_position_ids=data_cfg.reset_position_ids,
        reset_attention_mask=data_cfg.reset_attention_mask,
        eod_mask_loss=data_cfg.eod_mask_loss,
        create_attention_mask=data_cfg.reset_attention_mask,
        data_parallel_size=dp_size,
    )


def _final_blend_spec(schedule: BlendSchedule) -> list:
    final = schedule.phases[-1]
    if len(final.blend.prefixes) == 1:
        return list(final.blend.prefixes)
    return [x for p, w in zip(final.blend.prefixes, final.weights) for x in (repr(float(w)), p)]


def build_scheduled_gpt_datasets(
    data_cfg,
    schedule: BlendSchedule,
    seq_length: int,
    seed: int,
    valid_samples: int,
    tokenizer=None,
    data_parallel_size: int = 1,
):
    """(train, valid, None) for a blend schedule; call on every rank (megatron syncs its cache builds)."""
    from megatron.core.datasets.blended_dataset import BlendedDataset
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    if data_cfg.data_path or data_cfg.train_data_path or data_cfg.valid_data_path or data_cfg.test_data_path:
        raise ValueError(
            "data.blend_schedule replaces data.data_path and data.{train,valid,test}_data_path: leave them empty "
            "(validation reads the valid split, data.split, of the schedule's final phase)"
        )
    all_blends = [p.blend for p in schedule.phases]
    for i, blend in enumerate(all_blends):
        check_prefixes(blend, f"data.blend_schedule[{i}] ({schedule.phases[i].name})")
    eod, vocab = eod_and_vocab(all_blends, tokenizer)
    gbs = schedule.global_batch_size

    # Each phase's window of each of its datasets, laid end to end per dataset.
    used = {prefix: 0 for prefix in schedule.prefixes}
    windows = []  # per phase: [(prefix, offset, length)]
    for r in schedule.resolved:
        n = (r.end_iteration - r.start_iteration) * gbs
        phase_windows = []
        for prefix, weight in zip(r.phase.blend.prefixes, r.phase.weights):
            length = samples_needed(weight, n)
            phase_windows.append((prefix, used[prefix], length))
            used[prefix] += length
        windows.append(phase_windows)

    bases = {}
    for prefix, total in used.items():
        blend = Blend((prefix,), None)
        config = _gpt_config(data_cfg, blend, seq_length, seed, eod, vocab, data_parallel_size)
        sizes = [total, 0, 0]
        _drop_unread_splits(config, sizes)
        _check_split_ranges(blend, config.split_matrix, data_cfg.split)
        bases[prefix] = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()[0]

    phase_datasets, phase_ids = [], []
    ids = {prefix: i for i, prefix in enumerate(schedule.prefixes)}
    for r, phase_windows in zip(schedule.resolved, windows):
        n = (r.end_iteration - r.start_iteration) * gbs
        views = [DatasetWindow(bases[prefix], offset, length) for prefix, offset, length in phase_windows]
        if len(views) == 1:
            dataset = views[0]
        else:
            config = _gpt_config(data_cfg, r.phase.blend, seq_length, seed, eod, vocab, data_parallel_size)
            dataset = BlendedMegatronDatasetBuilder.build_generic_dataset(
                BlendedDataset, lambda: True, True, views, list(r.phase.weights), n, config
            )
        phase_datasets.append(dataset)
        phase_ids.append([ids[prefix] for prefix, _, _ in phase_windows])
    train = ScheduledBlendDataset(schedule, phase_datasets, phase_ids)

    valid: Optional[object] = None
    if valid_samples:
        final_cfg = dataclasses.replace(data_cfg, data_path=_final_blend_spec(schedule), blend_schedule=[])
        _, valid, _ = build_gpt_datasets(
            final_cfg, seq_length, seed, (0, valid_samples, 0), tokenizer=tokenizer, data_parallel_size=data_parallel_size
        )
    return train, valid, None
