"""Global batches from a map-style dataset: which samples a data-parallel rank reads at each step.

A step reads `global_batch_size` consecutive samples starting at `consumed_samples` (so a resumed
run continues exactly where it stopped). Micro-batch m of data-parallel rank r holds samples
`start + m*mbs*dp + r*mbs ... + mbs` (Megatron's order). Every TP/PP rank of a data-parallel
replica reads the same micro-batches itself, from the memory-mapped dataset, instead of waiting
for a broadcast.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from megactllm.errors import UserError


class DataExhaustedError(UserError, RuntimeError):
    pass


def collate(items: list[dict]) -> dict:
    """Stack equal-shaped dataset fields (tensors, arrays or scalars) into [len(items), ...] tensors."""
    batch = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = torch.from_numpy(np.stack([np.asarray(v) for v in values]))
    return batch


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def microbatch_indices(
    consumed_samples: int, global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int
) -> list[list[int]]:
    """Dataset indices of this rank's micro-batches for the step starting at consumed_samples."""
    per_round = micro_batch_size * dp_size
    rounds = global_batch_size // per_round
    out = []
    for m in range(rounds):
        first = consumed_samples + m * per_round + dp_rank * micro_batch_size
        out.append(list(range(first, first + micro_batch_size)))
    return out


class GlobalBatchReader:
    """Collated micro-batches of each step for one data-parallel rank."""

    def __init__(
        self,
        dataset: Sequence,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        device: torch.device,
        collate_fn: Optional[Callable] = None,
        split_name: str = "train",
        wrap: bool = False,
    ):
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.device = device
        self.collate_fn = collate_fn or collate
        self.split_name = split_name
        # Evaluation re-reads its split from the start each time; training never wraps silently.
        self.wrap = wrap

    def step(self, consumed_samples: int) -> list[dict]:
        n = len(self.dataset)
        last = consumed_samples + self.global_batch_size
        if not self.wrap and last > n:
            raise DataExhaustedError(
                f"the {self.split_name} dataset has {n} samples but the step at sample {consumed_samples} needs "
                f"{last}: build the datasets for the run's length (train_iters/train_tokens) or add data"
            )
        batches = []
        for indices in microbatch_indices(consumed_samples, self.global_batch_size, self.micro_batch_size, self.dp_rank, self.dp_size):
            items = [self.dataset[i % n] for i in indices]
            batches.append(to_device(self.collate_fn(items), self.device))
        return batches
