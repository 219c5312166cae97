"""Mistral (MistralForCausalLM): LLaMA blocks, with a sliding attention window in v0.1.

megactllm attends over the whole sequence, which equals the window's attention only while the
sequence is no longer than the window: a run whose sequence exceeds it is refused (ModelFamily.check),
and the imported model's default sequence length is clipped to the window.
"""
from __future__ import annotations

from megactllm.config import ModelConfig
from megactllm.model.families.base import ModelFamily
from megactllm.model.families.llama import rope_from_hf


class MistralFamily(ModelFamily):
    name = "mistral"
    hf_architecture = "MistralForCausalLM"
    hf_model_type = "mistral"
    gguf_architecture = "llama"  # llama.cpp runs Mistral dense models as its llama graph

    def model_config_from_hf(self, hf: dict, where: str) -> ModelConfig:
        fields = self._common_from_hf(hf, where, {})
        window = hf.get("sliding_window")
        if window is not None:
            window = int(window)
            fields["seq_length"] = min(fields["seq_length"], window)
        return ModelConfig(**fields, sliding_window=window, **rope_from_hf(hf, where, allow_llama3=False))

    def hf_config_from_model(self, model: ModelConfig) -> dict:
        return {**self._common_to_hf(model), "sliding_window": model.sliding_window}

    def gguf_problem(self, model: ModelConfig):
        if model.sliding_window is not None and model.sliding_window < (model.max_position_embeddings or 0):
            return f"sliding window {model.sliding_window} (llama.cpp's llama graph attends over the whole context)"
        return super().gguf_problem(model)
