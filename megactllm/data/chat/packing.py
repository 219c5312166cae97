"""Turning tokenized chat samples into fixed-length training rows, packed or one per row.

A sample of n tokens fills n - 1 positions (inputs are tokens[:-1], labels tokens[1:]). A packed row
holds several whole samples back to back: positions restart at 0 in each, and `segment_ids` tells
the model where attention must stop (see megactllm.training.stages.sft.attention_mask_from_segments), so
every sample is computed exactly as if it were alone. Padding (segment 0) is never trained.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# How many open rows first-fit looks back at: near-optimal fill, linear time.
_OPEN_ROWS = 64


def pack_rows(positions: Sequence[int], seq_length: int) -> list[list[int]]:
    """Groups sample indices into rows of at most seq_length positions (first fit, order kept)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(positions):
        if n > seq_length:
            raise ValueError(f"sample {i} fills {n} positions, more than seq_length {seq_length}; truncate it first")
        for r in range(max(0, len(rows) - _OPEN_ROWS), len(rows)):
            if room[r] >= n:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(seq_length - n)
    return rows


def build_row(samples: Sequence[tuple[np.ndarray, np.ndarray]], seq_length: int, pad_id: int) -> dict[str, np.ndarray]:
    """One training row from (tokens, loss_mask) samples that fit in seq_length positions."""
    tokens = np.full(seq_length, pad_id, dtype=np.int64)
    labels = np.full(seq_length, pad_id, dtype=np.int64)
    loss_mask = np.zeros(seq_length, dtype=np.float32)
    position_ids = np.zeros(seq_length, dtype=np.int64)
    segment_ids = np.zeros(seq_length, dtype=np.int64)
    at = 0
    for segment, (sample_tokens, sample_mask) in enumerate(samples, start=1):
        n = len(sample_tokens) - 1
        if at + n > seq_length:
            raise ValueError(f"samples fill more than seq_length {seq_length} positions")
        tokens[at : at + n] = sample_tokens[:-1]
        labels[at : at + n] = sample_tokens[1:]
        loss_mask[at : at + n] = sample_mask[1:]
        position_ids[at : at + n] = np.arange(n)
        segment_ids[at : at + n] = segment
        at += n
    # Padding runs on from the last position so that it never looks like the start of a sample.
    position_ids[at:] = np.arange(at, seq_length)
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids, "segment_ids": segment_ids}
