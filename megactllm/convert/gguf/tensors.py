"""HF tensors -> GGUF tensors of the family's llama.cpp architecture: names (from the family), the
rotary permutation of Q/K, storage types.

HF LLaMA applies RoPE to the two halves of each head ("rotate half"); llama.cpp's llama
architecture rotates adjacent pairs (the original LLaMA layout). Within each head, HF row
r < d/2 is pair (r, r + d/2)'s first element; llama.cpp wants that pair at rows (2r, 2r+1). So
Q and K rows are reordered per head: [first half, second half] -> interleaved. llama.cpp's qwen2 and
qwen3 graphs rotate halves as HF does (NEOX), so their rows are written as they are.
"""
from __future__ import annotations

from typing import Optional

import torch

from megactllm.config import ModelConfig
from megactllm.convert.errors import ConversionError
from megactllm.model.families import FAMILIES, family_of

# Storage of the export itself; quantized types are made from it by llama.cpp's quantizer.
FLOAT_TYPES = ("f32", "f16", "bf16")


def gguf_name(hf_name: str, model: Optional[ModelConfig] = None) -> str:
    """llama.cpp's name of an HF tensor in the model family's GGUF architecture (LLaMA's by default)."""
    family = family_of(model) if model is not None else FAMILIES["llama"]
    name = family.gguf_tensor_name(hf_name)
    if name is None:
        raise ConversionError(f"tensor {hf_name} has no place in llama.cpp's {family.gguf_architecture} architecture")
    return name


def rotary_to_interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    rows, cols = weight.shape
    d = rows // heads
    return weight.reshape(heads, 2, d // 2, cols).transpose(1, 2).reshape(rows, cols)


def to_gguf(hf_name: str, tensor: torch.Tensor, model: ModelConfig, outtype: str):
    """(GGUF name, numpy array, raw GGML type or None) for one HF tensor."""
    import gguf

    name = gguf_name(hf_name, model)
    if family_of(model).gguf_permutes_qk:
        if hf_name.endswith("q_proj.weight"):
            tensor = rotary_to_interleaved(tensor, model.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            tensor = rotary_to_interleaved(tensor, model.num_kv_heads)
    # 1-D tensors (norms) stay f32, as llama.cpp expects and its quantizer keeps them.
    if tensor.dim() == 1 or outtype == "f32":
        return name, tensor.to(torch.float32).contiguous().numpy(), None
    if outtype == "f16":
        return name, tensor.to(torch.float16).contiguous().numpy(), None
    if outtype == "bf16":
        raw = tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
        return name, raw, gguf.GGMLQuantizationType.BF16
    raise ConversionError(f"outtype {outtype!r} is not a float type {FLOAT_TYPES}")


def check_runnable(model: ModelConfig, where: str) -> None:
    """Refuse shapes llama.cpp's graph for the family cannot run, before writing anything."""
    family = family_of(model)
    problems = []
    if model.add_bias_linear:
        problems.append(f"linear biases (llama.cpp's {family.gguf_architecture} graph has none)")
    if family.gguf_problem(model):
        problems.append(family.gguf_problem(model))
    if model.head_dim % 2:
        problems.append(f"odd head dimension {model.head_dim} (RoPE rotates pairs)")
    if model.num_attention_heads % model.num_kv_heads:
        problems.append(f"{model.num_attention_heads} query heads not divisible by {model.num_kv_heads} KV heads")
    if problems:
        raise ConversionError(f"{where}: llama.cpp cannot run this model: " + "; ".join(problems))

