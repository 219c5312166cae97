"""The few collectives a save or a load needs, which are no-ops in a single process."""
from __future__ import annotations

from typing import Any, Optional

import torch.distributed as dist


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast(value: Any, src: int = 0) -> Any:
    """Rank src's value on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather(value: Any) -> list:
    if not dist.is_initialized():
        return [value]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def first_failure(error: Optional[BaseException]) -> Optional[tuple[int, BaseException]]:
    """Collective: (rank, exception) of the lowest rank whose step failed, the same on every rank.

    Every rank calls it after a rank-local step, so that a failure on one rank (a full disk while
    writing its own file) is known to all, and none is left waiting at the next collective.
    """
    if not dist.is_initialized():
        return (0, error) if error is not None else None
    flags = all_gather(None if error is None else (type(error).__name__, str(error)))
    for r, flag in enumerate(flags):
        if flag is not None:
            return r, (error if r == rank() else RuntimeError(f"rank {r}: {flag[0]}: {flag[1]}"))
    return None
