"""Hugging Face weights of the live, sharded training model, gathered in memory (no trip through disk).

    state = hf_state_dict_from_chunks(model_chunks, model_config)   # collective over TP x PP

Each tensor-parallel shard is all-gathered along its partition dimension (the SwiGLU fc1 shards are
[gate_r; up_r] and are regrouped into [gate; up]), the pipeline stages send their layers (named by
their global layer numbers) to the first stage, and the megatron tensors are split into HF names by
the model's family (megactllm.convert.layout), as the on-disk export does. The first rank of each
model-parallel group (TP rank 0, first pipeline stage) gets the whole state dict; the others None.
RL rollouts hand the policy's current weights to their engine this way every step.
"""
from __future__ import annotations

import re
from typing import Optional

import torch
import torch.distributed as dist

from megactllm.config import ModelConfig
from megactllm.convert import layout

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
# The local spec's norms are modules of their own; the TE spec fuses them into the next linear
# layer, under the name dist_checkpointing uses for both.
_LOCAL_NAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}


def _unwrap(module):
    from megatron.core.models.gpt import GPTModel

    while not isinstance(module, GPTModel) and hasattr(module, "module"):
        module = module.module
    return module


def _gather_tp(param: torch.Tensor, name: str) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    tensor = param.detach()
    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return tensor.float().cpu().clone()
    parts = [torch.empty_like(tensor) for _ in range(tp)]
    dist.all_gather(parts, tensor.contiguous(), group=ps.get_tensor_model_parallel_group())
    dim = param.partition_dim
    if name.endswith("mlp.linear_fc1.weight"):
        halves = [p.chunk(2, dim=dim) for p in parts]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=dim).float().cpu()
    return torch.cat(parts, dim=dim).float().cpu()


def _megatron_tensors(chunks: list) -> dict:
    """(dist_checkpointing key, global layer or None) -> full tensor, for this pipeline stage's layers."""
    out = {}
    for chunk in chunks:
        model = _unwrap(chunk)
        layer_numbers = {str(j): layer.layer_number - 1 for j, layer in enumerate(model.decoder.layers)}
        for name, param in model.named_parameters():
            full = _gather_tp(param, name)
            m = _LAYER.match(name)
            if m:
                rest = _LOCAL_NAMES.get(m.group(2), m.group(2))
                out[(f"decoder.layers.{rest}", layer_numbers[m.group(1)])] = full
            else:
                out[(name, None)] = full
    return out


def hf_state_dict_from_chunks(chunks: list, model: ModelConfig) -> Optional[dict]:
    """{HF name: fp32 CPU tensor} on the first rank of the model-parallel group, None on the others."""
    from megatron.core import parallel_state as ps

    if model.num_moe_experts:
        raise NotImplementedError("in-memory HF weights of a mixture-of-experts model are not implemented")
    tensors = _megatron_tensors(chunks)
    if ps.get_tensor_model_parallel_rank() != 0:
        return None
    if ps.get_pipeline_model_parallel_world_size() > 1:
        group = ps.get_pipeline_model_parallel_group()
        first = dist.get_process_group_ranks(group)[0]
        received = [None] * dist.get_world_size(group) if dist.get_rank() == first else None
        dist.gather_object(tensors, received, dst=first, group=group)
        if dist.get_rank() != first:
            return None
        tensors = {k: v for stage in received for k, v in stage.items()}
    return _to_hf(tensors, model)


def _to_hf(tensors: dict, model: ModelConfig) -> dict:
    state = {layout.HF_EMBEDDING: tensors[(layout.EMBEDDING, None)][: model.vocab_size]}
    for key, names in layout.layer_tensors(model).items():
        for i in range(model.num_layers):
            for name, part in zip(names, layout.to_hf(key, tensors[(key, i)], model), strict=True):
                state[layout.hf_layer(i, name)] = part.contiguous()
    state[layout.HF_FINAL_NORM] = tensors[(layout.FINAL_NORM, None)]
    if not model.tie_word_embeddings:
        state[layout.HF_LM_HEAD] = tensors[(layout.OUTPUT_LAYER, None)][: model.vocab_size]
    return state
