"""RMSNorm for megatron-core's local layer spec.

megatron-core's torch fallback norm refuses sequence parallelism (it cannot mark its weight for
the tensor-parallel gradient all-reduce) and Apex is GPU-only. This one marks its weight and
computes exactly as Hugging Face's LlamaRMSNorm does (fp32 statistics, weight applied in the
input dtype), so converted checkpoints give the same logits.
"""
from __future__ import annotations

import torch


class RMSNorm(torch.nn.Module):
    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_unused):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        # Under sequence parallelism each TP rank sees a slice of the sequence, so the weight's
        # gradient is partial: megatron's finalize_model_grads all-reduces params marked so.
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(input_dtype)
