"""LLaMA family: LLaMA-2, CT-LLM, MAP-NEO and Llama-3.x (LlamaForCausalLM).

Llama-3.1/3.2 scale their RoPE frequencies ("llama3": factor, low/high frequency factors, original
length). megatron-core's RotaryEmbedding computes that scaling with a free factor but fixed low/high
factors (1, 4) and original length (8192), which are Llama-3.x's own; other values are refused by
field rather than converted into a model with different frequencies.
"""
from __future__ import annotations

import torch

from megactllm.config import ModelConfig
from megactllm.model.families.base import ModelFamily, ModelFamilyError, rope_fields

# What megatron-core 0.16's RotaryEmbedding._apply_scaling computes; the factor is free.
MEGATRON_LLAMA3_CONSTANTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def llama3_scaling(scaling: dict, where: str) -> float:
    """The factor of a "llama3" RoPE scaling that megatron-core computes exactly, else a named error."""
    for field in ("factor", *MEGATRON_LLAMA3_CONSTANTS):
        if scaling.get(field) is None:
            raise ModelFamilyError(f"{where}: RoPE scaling 'llama3' has no {field}")
    for field, wanted in MEGATRON_LLAMA3_CONSTANTS.items():
        if float(scaling[field]) != wanted:
            raise ModelFamilyError(
                f"{where}: RoPE scaling 'llama3' with {field}={scaling[field]!r} is not supported: megatron-core "
                f"computes {field}={wanted:g} only (Llama-3.x's value)"
            )
    return float(scaling["factor"])


def rope_from_hf(hf: dict, where: str, allow_llama3: bool) -> dict:
    """ModelConfig RoPE fields; any scaling but llama3 (where allowed) is refused by its type."""
    theta, scaling = rope_fields(hf)
    fields = dict(rotary_base=theta)
    rope_type = scaling.get("rope_type")
    if rope_type is None:
        return fields
    if rope_type == "llama3" and allow_llama3:
        return {**fields, "rope_scaling": "llama3", "rope_scaling_factor": llama3_scaling(scaling, where)}
    raise ModelFamilyError(
        f"{where}: RoPE scaling {rope_type!r} is not supported (megactllm computes plain RoPE"
        + (" and 'llama3'" if allow_llama3 else "") + "); remove the scaling or convert a model without it"
    )


def rope_to_hf(model: ModelConfig) -> dict:
    if model.rope_scaling != "llama3":
        return {}
    scaling = {"rope_type": "llama3", "factor": model.rope_scaling_factor, **MEGATRON_LLAMA3_CONSTANTS}
    return {"rope_scaling": scaling, "rope_parameters": {**scaling, "rope_theta": model.rotary_base}}


class LlamaFamily(ModelFamily):
    name = "llama"
    hf_architecture = "LlamaForCausalLM"
    hf_model_type = "llama"
    gguf_architecture = "llama"

    def model_config_from_hf(self, hf: dict, where: str) -> ModelConfig:
        refused = {
            "attention_bias": (bool(hf.get("attention_bias", False)), False),
            "mlp_bias": (bool(hf.get("mlp_bias", False)), False),
            "pretraining_tp": (hf.get("pretraining_tp", 1) or 1, 1),
        }
        fields = self._common_from_hf(hf, where, refused)
        return ModelConfig(**fields, **rope_from_hf(hf, where, allow_llama3=True))

    def hf_config_from_model(self, model: ModelConfig) -> dict:
        return {**self._common_to_hf(model), "attention_bias": False, "mlp_bias": False, **rope_to_hf(model)}

    def gguf_problem(self, model: ModelConfig):
        return None  # llama3 scaling travels as the rope_freqs tensor

    def gguf_extra_tensors(self, model: ModelConfig) -> dict:
        """llama.cpp takes llama3 scaling as per-frequency divisors (rope_freqs): plain / scaled
        inverse frequencies, computed by megatron-core's own RotaryEmbedding so they are what training used."""
        if model.rope_scaling != "llama3":
            return {}
        from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

        kwargs = self.gpt_model_kwargs(model)
        rotary = dict(kv_channels=model.head_dim, rotary_percent=1.0, rotary_base=kwargs["rotary_base"],
                      use_cpu_initialization=True)
        plain = RotaryEmbedding(**rotary).inv_freq
        scaled = RotaryEmbedding(**rotary, rope_scaling=True, rope_scaling_factor=kwargs["rope_scaling_factor"]).inv_freq
        return {"rope_freqs.weight": (plain / scaled).to(torch.float32)}
