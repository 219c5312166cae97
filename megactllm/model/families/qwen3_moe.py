"""Qwen3-MoE (Qwen3MoeForCausalLM: Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention (per-head Q/K
RMSNorm, head dimension 128, no bias) with mixture-of-experts MLPs: 128 experts, top 8, renormalised
top-k probabilities, no shared expert."""
from __future__ import annotations

from megactllm.config import ModelConfig
from megactllm.model.families.llama import rope_from_hf
from megactllm.model.families.moe import MoEFamily


class Qwen3MoeFamily(MoEFamily):
    name = "qwen3_moe"
    hf_architecture = "Qwen3MoeForCausalLM"
    hf_model_type = "qwen3_moe"
    gguf_architecture = "qwen3moe"
    gguf_permutes_qk = False

    def model_config_from_hf(self, hf: dict, where: str) -> ModelConfig:
        refused = {
            "attention_bias": (bool(hf.get("attention_bias", False)), False),
            "use_sliding_window": (bool(hf.get("use_sliding_window", False)), False),
        }
        fields = self._common_from_hf(hf, where, refused)
        fields.update(self._moe_from_hf(hf, where, fields["num_layers"]))
        return ModelConfig(**fields, qk_layernorm=True, **rope_from_hf(hf, where, allow_llama3=False))

    def hf_config_from_model(self, model: ModelConfig) -> dict:
        return {
            **self._common_to_hf(model),
            **self._moe_to_hf(model),
            "attention_bias": False,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": model.num_layers,
        }
