"""The GRPO policy loss on per-token log-probabilities (TRL's GRPOTrainer is the numerical reference).

For completion token t of row i, with advantage A_i, policy log-prob p, the rollout-time policy's
log-prob p_old and the frozen reference's p_ref:

    ratio   = exp(p - p_old)
    surr    = min(ratio * A_i, clip(ratio, 1 - clip_low, 1 + clip_high) * A_i)     (DAPO's asymmetric clip)
    kl      = exp(p_ref - p) - (p_ref - p) - 1                                     (k3, Schulman)
              (x ratio with kl_ratio_correction, DeepSeek-V3.2's unbiased form, TRL's default since 1.x)
    loss_t  = -surr + kl_coeff * kl

    sequence (GRPO):           mean over rows of (mean over the row's completion tokens)
    token    (DAPO/Dr. GRPO):  sum over all completion tokens / their number

`grpo_token_losses` returns the per-token terms; `grpo_loss_sums` the (sum, count) pair the shared
loop divides globally, so a micro-batched, data-parallel step averages as one process over the
whole batch would.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

NORMALIZATIONS = ("sequence", "token")


@dataclass
class GRPOTerms:
    per_token_loss: torch.Tensor  # [rows, tokens]
    kl: Optional[torch.Tensor]  # [rows, tokens], None without a reference
    clipped: torch.Tensor  # [rows, tokens] 1.0 where the clip is active (TRL's clip ratio)


def grpo_token_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    ref_logps: Optional[torch.Tensor] = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coeff: float = 0.0,
    kl_ratio_correction: bool = False,
) -> GRPOTerms:
    """Per-token GRPO terms; logps [rows, tokens] carries the gradient, the others are constants."""
    adv = advantages.float().unsqueeze(-1)
    ratio = torch.exp(logps.float() - old_logps.float())
    clipped_ratio = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    loss = -torch.min(ratio * adv, clipped_ratio * adv)
    kl = None
    if kl_coeff != 0.0:
        if ref_logps is None:
            raise ValueError("kl_coeff != 0 needs the reference log-probs")
        delta = ref_logps.float() - logps.float()
        kl = torch.exp(delta) - delta - 1
        if kl_ratio_correction:
            # DeepSeek-V3.2's unbiased reverse-KL gradient (TRL's use_bias_correction_kl): weight by the ratio.
            kl = kl * ratio
        loss = loss + kl_coeff * kl
    clipped = (((ratio < 1 - clip_low) & (adv < 0)) | ((ratio > 1 + clip_high) & (adv > 0))).float()
    return GRPOTerms(loss, kl, clipped)


def grpo_loss_sums(per_token_loss: torch.Tensor, mask: torch.Tensor, normalization: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss sum, count) of one micro-batch: rows and their token means, or tokens."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"grpo loss normalization {normalization!r} is not one of {NORMALIZATIONS}")
    mask = mask.float()
    token_sums = (per_token_loss * mask).sum(-1)
    if normalization == "sequence":
        return (token_sums / mask.sum(-1).clamp(min=1.0)).sum(), torch.tensor(per_token_loss.shape[0], dtype=torch.int)
    return token_sums.sum(), mask.sum().to(torch.int)
