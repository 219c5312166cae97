"""Direct Preference Optimization losses from sequence log-probabilities.

For a pair, with policy log-probs (pc, pr) and reference log-probs (rc, rr) of the chosen and
rejected responses (sums over response tokens):

    chosen_reward   = beta * (pc - rc)
    rejected_reward = beta * (pr - rr)
    h               = chosen_reward - rejected_reward          (the reward margin)

    sigmoid (DPO, Rafailov et al. 2023):  -(1 - eps) * log sigmoid(h) - eps * log sigmoid(-h)
        eps = label smoothing: the chance that a preference label is flipped (conservative DPO).
    ipo (Azar et al. 2023):  ((pc - rc) - (pr - rr) - 1 / (2 * beta)) ** 2
        beta plays the role of IPO's tau; log-ratios are sums, as in DPO.

Reward accuracy is the share of pairs whose chosen reward is strictly above the rejected one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo")


@dataclass
class DPOOutput:
    losses: torch.Tensor  # [pairs]
    chosen_rewards: torch.Tensor  # [pairs], detached
    rejected_rewards: torch.Tensor
    margins: torch.Tensor
    accuracies: torch.Tensor  # [pairs] of 0.0 / 1.0


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> DPOOutput:
    """Per-pair losses and rewards; inputs are [pairs] sequence log-probs (reference ones need no grad)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo loss type {loss_type!r} is not one of {LOSS_TYPES}")
    if beta <= 0:
        raise ValueError(f"dpo beta must be positive, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo label smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_ratio = policy_chosen.float() - reference_chosen.float()
    rejected_ratio = policy_rejected.float() - reference_rejected.float()
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        h = beta * delta
        losses = -(1.0 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    else:
        if label_smoothing:
            raise ValueError("label smoothing applies to the sigmoid DPO loss, not to IPO")
        losses = (delta - 1.0 / (2.0 * beta)) ** 2
    chosen_rewards = (beta * chosen_ratio).detach()
    rejected_rewards = (beta * rejected_ratio).detach()
    return DPOOutput(
        losses=losses,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        margins=chosen_rewards - rejected_rewards,
        accuracies=(chosen_rewards > rejected_rewards).float(),
    )
