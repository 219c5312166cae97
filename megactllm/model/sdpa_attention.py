"""Core attention for the local layer spec on torch's scaled_dot_product_attention.

megatron-core's local DotProductAttention builds the whole [b, heads, s, s] score matrix (plus
its softmax and dropout copies); torch's SDPA picks a fused kernel (flash or memory-efficient on
GPU, the flash kernel on CPU) that never materialises it. This module is a drop-in for the
`core_attention` submodule of megatron's SelfAttention: same constructor, same inputs
([s, b, heads, d] query/key/value, megatron's boolean mask where True blocks), same output
[s, b, heads x d], and no parameters, so checkpoints are the same with either module.

Masks: no mask means causal (SDPA's own causal path, the fast one); a [b or 1, 1, s, s] mask (the
document-reset or packed-SFT mask, causal already folded in) is passed through inverted, since
SDPA's boolean mask marks what may be attended. GQA: key/value heads are shared by
heads/groups query heads (enable_gqa). Dropout uses megatron's model-parallel RNG stream, as
DotProductAttention does, so TP ranks drop independently and reproducibly.

Context parallelism: with context_parallel_size > 1 the sequence arrives split the way megatron
splits it (two chunks per rank); keys and values are gathered over the CP group and each query
chunk attends by its global position (megactllm.model.context_parallel_attention).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.utils import divide

from megactllm.model.context_parallel_attention import attend_context_parallel


class SDPAttention(MegatronModule):
    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        unsupported = []
        if config.window_size is not None:
            unsupported.append(f"window_size={config.window_size}")
        if getattr(config, "softmax_type", "vanilla") != "vanilla":
            unsupported.append(f"softmax_type={config.softmax_type}")
        if unsupported:
            raise ValueError("SDPAttention (local spec) does not support " + ", ".join(unsupported))
        if pg_collection is None:
            from megatron.core.process_groups_config import ProcessGroupCollection

            required = ["tp", "cp"] if config.context_parallel_size > 1 else ["tp"]
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=required)
        tp = pg_collection.tp.size()
        # cp_comm_type (p2p, a2a, all_gather) picks TE's algorithm; this module always all-gathers.
        self.cp_group = getattr(pg_collection, "cp", None) if config.context_parallel_size > 1 else None
        self.attn_mask_type = attn_mask_type
        self.heads = divide(config.num_attention_heads, tp)
        self.groups = divide(config.num_query_groups or config.num_attention_heads, tp)
        head_dim = config.kv_channels
        # megatron's query-key layer scaling divides and then multiplies back in fp32: the same scale.
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias=None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPAttention takes no packed_seq_params or attention_bias (use the TE spec)")
        sq, b = query.shape[0], query.shape[1]
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        causal = attention_mask is None and mask_type == AttnMaskType.causal and sq > 1
        allowed = None
        if attention_mask is not None:
            allowed = ~attention_mask.bool()
            # A query with every key blocked: megatron's -10000 fill spreads it evenly over all keys,
            # SDPA would give NaN. Open its row and zero its query: equal scores, the same mean.
            blocked = ~allowed.any(dim=-1, keepdim=True)  # [b or 1, 1, s, 1]
            allowed = allowed | blocked
            q = q * ~blocked
        dropout_p = self.dropout_p if self.training else 0.0

        def kernel(q, k, v, allowed, causal=False):
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=dropout_p, is_causal=causal, scale=self.scale,
                enable_gqa=self.heads != self.groups,
            )

        def attend():
            if self.cp_group is not None and self.cp_group.size() > 1:
                return attend_context_parallel(q, k, v, allowed, self.cp_group, kernel)
            return kernel(q, k, v, allowed, causal)

        if dropout_p and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                context = attend()
        else:
            context = attend()
        # [b, h, s, d] -> [s, b, h * d]
        return context.permute(2, 0, 1, 3).reshape(sq, b, -1)
