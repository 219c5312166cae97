"""How one model's weights are laid out in megatron-core and in Hugging Face (LLaMA-style families).

Megatron (global, layout-free tensors as dist_checkpointing stores them):
- `linear_qkv.weight` rows are grouped by query group: for each group g, its query heads, then
  its key head, then its value head ([q_g (heads/groups x d), k_g (d), v_g (d)] for g = 0..G-1).
  TP splits whole groups, which is why the interleaving exists; HF keeps q, k, v apart.
- `linear_qkv.bias` (Qwen2) is grouped the same way.
- `linear_fc1.weight` is [gate; up] (megatron's GLU applies the activation to the first half).
- the word embedding and output layer have padded rows (vocab rounded up for TP); HF has none.
- per-layer tensors are stacked on a leading layer axis under one key.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from megactllm.config import ModelConfig

# Checkpoint keys and HF names live with the model families; re-exported for convert's callers.
from megactllm.model.families import family_of
from megactllm.model.families.moe import GATE_UP_KEYS
from megactllm.model.families.base import (  # noqa: F401
    BASE_LAYER_TENSORS as LAYER_TENSORS,
    EMBEDDING,
    FC1,
    FC2,
    FINAL_NORM,
    HF_EMBEDDING,
    HF_FINAL_NORM,
    HF_LM_HEAD,
    INPUT_NORM,
    K_NORM,
    OUTPUT_LAYER,
    PRE_MLP_NORM,
    PROJ,
    Q_NORM,
    QKV,
    QKV_BIAS,
)


def hf_layer(i: int, name: str) -> str:
    return f"model.layers.{i}.{name}"


def layer_tensors_at(model: ModelConfig, i: int) -> dict:
    """Layer i's (megatron key, expert or None) -> HF names it is made of (fused order)."""
    return family_of(model).layer_tensors_at(model, i)


def per_layer_key(key: str, i: int) -> str:
    """The key megatron saves layer i's `key` under when layers differ (dense and MoE mixed)."""
    return key.replace("decoder.layers.", f"decoder.layers.{i}.", 1)


def layer_tensors(model: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Per-layer megatron key -> the HF tensor names it is made of (fused order), for this model."""
    return family_of(model).layer_tensors(model)


@dataclass(frozen=True)
class Shapes:
    """Global (unsharded, unpadded) shapes of each tensor, from the ModelConfig alone."""

    model: ModelConfig

    def megatron_layer(self, key: str) -> tuple:
        return family_of(self.model).megatron_layer_shape(self.model, key)

    def hf_layer(self, name: str) -> tuple:
        return family_of(self.model).hf_layer_shape(self.model, name)

    def vocab_rows(self) -> tuple:
        return (self.model.vocab_size, self.model.hidden_size)


def _group_sizes(model: ModelConfig) -> tuple[int, int, int]:
    """(query groups, rows of one group's queries, rows of one key or value head)."""
    groups = model.num_kv_heads
    if model.num_attention_heads % groups:
        raise ValueError(f"{model.num_attention_heads} attention heads do not split into {groups} query groups")
    d = model.head_dim
    return groups, model.num_attention_heads // groups * d, d


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, model: ModelConfig) -> torch.Tensor:
    """HF q/k/v projections -> megatron's group-interleaved linear_qkv weight."""
    if q.dim() == 1:  # biases: one column
        return fuse_qkv(q[:, None], k[:, None], v[:, None], model)[:, 0]
    groups, q_rows, d = _group_sizes(model)
    hidden = q.shape[-1]
    parts = (q.reshape(groups, q_rows, hidden), k.reshape(groups, d, hidden), v.reshape(groups, d, hidden))
    return torch.cat(parts, dim=1).reshape(groups * (q_rows + 2 * d), hidden)


def split_qkv(qkv: torch.Tensor, model: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's linear_qkv weight -> HF (q, k, v), each contiguous."""
    if qkv.dim() == 1:  # biases: one column
        return tuple(part[:, 0].contiguous() for part in split_qkv(qkv[:, None], model))
    groups, q_rows, d = _group_sizes(model)
    hidden = qkv.shape[-1]
    q, k, v = qkv.reshape(groups, q_rows + 2 * d, hidden).split([q_rows, d, d], dim=1)
    return q.reshape(-1, hidden).contiguous(), k.reshape(-1, hidden).contiguous(), v.reshape(-1, hidden).contiguous()


def fuse_gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.cat([gate, up], dim=0)


def split_gate_up(fc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gate, up = fc1.chunk(2, dim=0)
    return gate.contiguous(), up.contiguous()


def to_megatron(key: str, hf_parts: list[torch.Tensor], model: ModelConfig) -> torch.Tensor:
    """One layer's megatron tensor for `key` from its HF parts (in layer_tensors order)."""
    if key in (QKV, QKV_BIAS):
        return fuse_qkv(*hf_parts, model)
    if key in GATE_UP_KEYS:
        return fuse_gate_up(*hf_parts)
    (only,) = hf_parts
    return only


def to_hf(key: str, tensor: torch.Tensor, model: ModelConfig) -> tuple[torch.Tensor, ...]:
    """One layer's HF parts (in layer_tensors order) from its megatron tensor for `key`."""
    if key in (QKV, QKV_BIAS):
        return split_qkv(tensor, model)
    if key in GATE_UP_KEYS:
        return split_gate_up(tensor)
    return (tensor,)


def pad_vocab(rows: torch.Tensor, padded_size: int) -> torch.Tensor:
    """Rows [vocab, hidden] -> [padded_size, hidden]; padding rows are zero (no id ever selects them)."""
    if rows.shape[0] > padded_size:
        raise ValueError(f"{rows.shape[0]} vocabulary rows do not fit a padded vocabulary of {padded_size}")
    if rows.shape[0] == padded_size:  # nothing to pad (Qwen2.5's 152,064 rows): no copy of the largest tensor
        return rows
    padded = rows.new_zeros((padded_size, rows.shape[1]))
    padded[: rows.shape[0]] = rows
    return padded
