"""Group-relative advantages: each completion's reward against the other completions of its prompt."""
from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """(reward - group mean) / (group std + 1e-4), rows grouped consecutively (TRL's definition:
    the unbiased std; scale=False keeps the centred rewards, Dr. GRPO's choice)."""
    grouped = rewards.float().view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return centred.view(-1)
