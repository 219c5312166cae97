"""HF LLaMA tensors -> GGUF llama tensors: names, the rotary permutation of Q/K, storage types.

HF LLaMA applies RoPE to the two halves of each head ("rotate half"); llama.cpp's llama
architecture rotates adjacent pairs (the original LLaMA layout). Within each head, HF row
r < d/2 is pair (r, r + d/2)'s first element; llama.cpp wants that pair at rows (2r, 2r+1). So
Q and K rows are reordered per head: [first half, second half] -> interleaved.
"""
from __future__ import annotations

import torch

from megactllm.config import ModelConfig
from megactllm.convert.errors import ConversionError

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}

# Storage of the export itself; quantized types are made from it by llama.cpp's quantizer.
FLOAT_TYPES = ("f32", "f16", "bf16")


def gguf_name(hf_name: str) -> str:
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    parts = hf_name.split(".", 3)  # model.layers.{i}.{rest}
    if len(parts) == 4 and parts[1] == "layers" and parts[3] in _LAYER_NAMES:
        return f"blk.{int(parts[2])}.{_LAYER_NAMES[parts[3]]}"
    raise ConversionError(f"tensor {hf_name} has no place in llama.cpp's llama architecture")


def rotary_to_interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    rows, cols = weight.shape
    d = rows // heads
    return weight.reshape(heads, 2, d // 2, cols).transpose(1, 2).reshape(rows, cols)


def to_gguf(hf_name: str, tensor: torch.Tensor, model: ModelConfig, outtype: str):
    """(GGUF name, numpy array, raw GGML type or None) for one HF tensor."""
    import gguf

    if hf_name.endswith("q_proj.weight"):
        tensor = rotary_to_interleaved(tensor, model.num_attention_heads)
    elif hf_name.endswith("k_proj.weight"):
        tensor = rotary_to_interleaved(tensor, model.num_kv_heads)
    # 1-D tensors (norms) stay f32, as llama.cpp expects and its quantizer keeps them.
    if tensor.dim() == 1 or outtype == "f32":
        return gguf_name(hf_name), tensor.to(torch.float32).contiguous().numpy(), None
    if outtype == "f16":
        return gguf_name(hf_name), tensor.to(torch.float16).contiguous().numpy(), None
    if outtype == "bf16":
        raw = tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
        return gguf_name(hf_name), raw, gguf.GGMLQuantizationType.BF16
    raise ConversionError(f"outtype {outtype!r} is not a float type {FLOAT_TYPES}")


def check_runnable(model: ModelConfig, where: str) -> None:
    """Refuse shapes llama.cpp's llama architecture cannot run, before writing anything."""
    problems = []
    if model.add_bias_linear:
        problems.append("linear biases (llama.cpp's llama graph has none)")
    if model.head_dim % 2:
        problems.append(f"odd head dimension {model.head_dim} (RoPE rotates pairs)")
    if model.num_attention_heads % model.num_kv_heads:
        problems.append(f"{model.num_attention_heads} query heads not divisible by {model.num_kv_heads} KV heads")
    if problems:
        raise ConversionError(f"{where}: llama.cpp cannot run this model: " + "; ".join(problems))

