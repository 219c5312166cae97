"""Qwen3-MoE (Qwen3MoeForCausalLM: Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention (per-head Q/K
RMSNorm, head dimension 128, no bias) with mixture-of-experts MLPs: 128 experts, top 8, renormalised
top-k probabilities, no shared expert."""
from __future__ import annotations

from megactllm.config import ModelConfig
from megactllm.model.families.moe import MoEFamily
from megactllm.model.families.qwen3 import Qwen3Family


class Qwen3MoeFamily(MoEFamily, Qwen3Family):
    name = "qwen3_moe"
    hf_architecture = "Qwen3MoeForCausalLM"
    hf_model_type = "qwen3_moe"
    gguf_architecture = "qwen3moe"

    def hf_config_from_model(self, model: ModelConfig) -> dict:
        config = super().hf_config_from_model(model)
        del config["layer_types"]  # Qwen3MoeConfig has no layer_types: every layer attends fully
        return config
