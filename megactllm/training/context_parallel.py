"""The data side of context parallelism: this CP rank's part of each sequence, and sums over the group.

Every rank of a data-parallel replica reads the whole micro-batch; with context_parallel_size P > 1
each keeps 2 of its 2P sequence chunks (megatron-core's get_batch_on_this_cp_rank: chunks i and
2P-1-i, the attention mask cut on its query rows only, so keys stay global). Per-token losses and
token counts are then partial sums that the loop and megatron's finalize_model_grads reduce over
data x context parallel ranks. A loss that is not a sum over tokens (DPO's, a function of whole
sequence log-probs) first sums its per-sequence terms over the CP group: `sum_over_context_parallel`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

SEQUENCE_FIELDS = ("tokens", "labels", "loss_mask", "position_ids", "attention_mask")


def context_parallel_size() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_context_parallel_world_size() if ps.model_parallel_is_initialized() else 1


def split_for_context_parallel(batch: dict) -> dict:
    """This CP rank's [b, 2s/2P] slice of every sequence field (attention_mask [b, 1, s/P, s]); others dropped.

    The identity (the same dict) when CP is off.
    """
    if context_parallel_size() == 1:
        return batch
    from megatron.core.utils import get_batch_on_this_cp_rank

    fields = {k: batch.get(k) for k in SEQUENCE_FIELDS if k in batch}
    return get_batch_on_this_cp_rank(fields)


class _SumOverGroup(torch.autograd.Function):
    """All-reduce (sum) forward; backward passes each rank the gradient of its own addend (identity).

    Every CP rank computes the same loss of the summed value; each backpropagates it into its own
    tokens, so the sum of their gradients is the gradient of the one loss.
    """

    @staticmethod
    def forward(ctx, value: torch.Tensor, group) -> torch.Tensor:
        out = value.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def sum_over_context_parallel(value: torch.Tensor) -> torch.Tensor:
    if context_parallel_size() == 1:
        return value
    from megatron.core import parallel_state as ps

    return _SumOverGroup.apply(value, ps.get_context_parallel_group())


def is_context_parallel_leader() -> bool:
    """Rank 0 of the CP group: the one that counts a whole-sequence loss (the others compute it too)."""
    if context_parallel_size() == 1:
        return True
    from megatron.core import parallel_state as ps

    return ps.get_context_parallel_rank() == 0
