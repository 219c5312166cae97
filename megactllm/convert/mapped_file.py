"""A byte range of a file as a tensor, mapped rather than read.

Converters read each weight once and write it straight out: mapping its bytes lets the write read
the page cache directly, where reading first would copy every byte into fresh memory (on a 7B
layer, most of the read's time). The mapping is private, so writing to the tensor never changes
the file, and it is unmapped when the tensor is freed.
"""
from __future__ import annotations

import mmap
import os

import torch

from megactllm.convert.errors import ConversionError


def map_bytes(path: str | os.PathLike, start: int, nbytes: int) -> torch.Tensor:
    """Bytes [start, start + nbytes) of `path` as a uint8 tensor whose storage is exactly them
    (a larger storage would be copied whole by torch.save and the checkpoint writers)."""
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    base = start - start % mmap.ALLOCATIONGRANULARITY
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < start + nbytes:
                raise ConversionError(f"{path} is truncated: {nbytes} bytes at {start} are past its end")
            mapped = mmap.mmap(f.fileno(), start + nbytes - base, flags=mmap.MAP_PRIVATE,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=base)
    except OSError as e:
        raise ConversionError(f"{path}: cannot map {nbytes} bytes at {start} ({e})") from None
    return torch.frombuffer(memoryview(mapped)[start - base:], dtype=torch.uint8, count=nbytes)
