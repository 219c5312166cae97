"""Qwen2 / Qwen2.5 (Qwen2ForCausalLM): LLaMA blocks with biases on Q, K and V.

Qwen2's config always carries a sliding window, switched off by use_sliding_window=false (every
released Qwen2.5 model); a model with it switched on is refused.
"""
from __future__ import annotations

from megactllm.config import ModelConfig
from megactllm.model.families.base import ModelFamily
from megactllm.model.families.llama import rope_from_hf


class Qwen2Family(ModelFamily):
    name = "qwen2"
    hf_architecture = "Qwen2ForCausalLM"
    hf_model_type = "qwen2"
    gguf_architecture = "qwen2"
    gguf_permutes_qk = False

    def model_config_from_hf(self, hf: dict, where: str) -> ModelConfig:
        refused = {"use_sliding_window": (bool(hf.get("use_sliding_window", False)), False)}
        fields = self._common_from_hf(hf, where, refused)
        return ModelConfig(**fields, add_qkv_bias=True, **rope_from_hf(hf, where, allow_llama3=False))

    def hf_config_from_model(self, model: ModelConfig) -> dict:
        positions = model.max_position_embeddings or model.seq_length
        return {
            **self._common_to_hf(model),
            "use_sliding_window": False,
            "sliding_window": positions,
            "max_window_layers": model.num_layers,
        }
