"""Attention of one context-parallel rank's queries over the whole sequence's keys (local spec).

megatron-core splits a sequence of s tokens over a CP group of size P as 2P chunks of c = s / 2P
tokens; rank i holds chunks i and 2P-1-i (one early, one late: the causal work is balanced). Each
layer here all-gathers the keys and values over the CP group, puts the chunks back in sequence
order, and lets each of the rank's two query chunks attend the keys up to its own end: a causal
mask built from global positions, or the given mask (already [b, 1, s/P, s]: megatron slices the
document-reset or packed-SFT mask on its query dimension only), exact across chunk boundaries.

The gather's backward reduce-scatters: every rank's queries read every rank's keys, so the
gradient of a rank's keys is the sum of what all ranks' attention sends back to them.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist


class _GatherSequence(torch.autograd.Function):
    """All-gather along dim 0 over a group; backward: reduce-scatter the gradient back to its owner."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        size = dist.get_world_size(group)
        out = local.new_empty((size * local.shape[0],) + tuple(local.shape[1:]))
        dist.all_gather_into_tensor(out, local.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        size = dist.get_world_size(ctx.group)
        out = grad.new_empty((grad.shape[0] // size,) + tuple(grad.shape[1:]))
        dist.reduce_scatter_tensor(out, grad.contiguous(), group=ctx.group)
        return out, None


def chunk_owner_order(cp_size: int) -> list[int]:
    """For each global chunk j (0..2P-1), its block in the gathered tensor (rank r holds blocks 2r, 2r+1)."""
    order = []
    for j in range(2 * cp_size):
        order.append(2 * j if j < cp_size else 2 * (2 * cp_size - 1 - j) + 1)
    return order


def gather_sequence(local: torch.Tensor, group) -> torch.Tensor:
    """[2c, ...] of this rank -> [2Pc, ...] in global sequence order (autograd-correct)."""
    size = dist.get_world_size(group)
    gathered = _GatherSequence.apply(local, group)
    blocks = gathered.view(2 * size, local.shape[0] // 2, *local.shape[1:])
    index = torch.tensor(chunk_owner_order(size), device=local.device)
    return blocks.index_select(0, index).reshape(gathered.shape)


def local_query_starts(cp_rank: int, cp_size: int, chunk: int) -> tuple[int, int]:
    """Global positions of this rank's two query chunks."""
    return cp_rank * chunk, (2 * cp_size - 1 - cp_rank) * chunk


def attend_context_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: Optional[torch.Tensor],
    group,
    attend: Callable,
) -> torch.Tensor:
    """q [b, h, 2c, d] local; k, v [b, g, 2c, d] local; allowed None (causal) or [b|1, 1, 2c, s] (True: may attend).

    `attend(q, k, v, allowed)` runs the attention kernel. Returns [b, h, 2c, d].
    """
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    # Gather in [s, ...] layout (dim 0), where the chunks are contiguous.
    k_all = gather_sequence(k.permute(2, 0, 1, 3), group).permute(1, 2, 0, 3)
    v_all = gather_sequence(v.permute(2, 0, 1, 3), group).permute(1, 2, 0, 3)
    chunk = q.shape[2] // 2
    outputs = []
    for half, start in enumerate(local_query_starts(rank, size, chunk)):
        rows = slice(half * chunk, (half + 1) * chunk)
        if allowed is None:
            end = start + chunk  # causal: no key after the chunk's last query
            positions = torch.arange(end, device=q.device)
            mask = positions.unsqueeze(0) <= (start + torch.arange(chunk, device=q.device)).unsqueeze(1)
        else:
            mask = allowed[:, :, rows, :]
            # Keys past the last column any row of the chunk may see add nothing: leave them out.
            seen = mask.reshape(-1, mask.shape[-1]).any(dim=0).nonzero()
            end = int(seen.max()) + 1 if seen.numel() else 1
            mask = mask[..., :end]
        outputs.append(attend(q[:, :, rows], k_all[:, :, :end], v_all[:, :, :end], mask))
    return torch.cat(outputs, dim=2)
