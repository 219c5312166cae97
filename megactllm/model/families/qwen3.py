"""Qwen3 (Qwen3ForCausalLM): LLaMA blocks with RMSNorm on each head's queries and keys (before
RoPE), a head dimension of its own (128, not hidden/heads), no QKV bias."""
from __future__ import annotations

from megactllm.config import ModelConfig
from megactllm.model.families.base import ModelFamily
from megactllm.model.families.llama import rope_from_hf


class Qwen3Family(ModelFamily):
    name = "qwen3"
    hf_architecture = "Qwen3ForCausalLM"
    hf_model_type = "qwen3"
    gguf_architecture = "qwen3"
    gguf_permutes_qk = False

    def model_config_from_hf(self, hf: dict, where: str) -> ModelConfig:
        refused = {
            "attention_bias": (bool(hf.get("attention_bias", False)), False),
            "use_sliding_window": (bool(hf.get("use_sliding_window", False)), False),
        }
        fields = self._common_from_hf(hf, where, refused)
        return ModelConfig(**fields, qk_layernorm=True, **rope_from_hf(hf, where, allow_llama3=False))

    def hf_config_from_model(self, model: ModelConfig) -> dict:
        return {
            **self._common_to_hf(model),
            "attention_bias": False,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": model.num_layers,
            "layer_types": ["full_attention"] * model.num_layers,
        }
