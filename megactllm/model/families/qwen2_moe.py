"""Qwen2-MoE (Qwen2MoeForCausalLM: Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen2's attention (QKV bias)
with mixture-of-experts MLPs (Qwen1.5-MoE: 60 experts, top 4, probabilities not renormalised) plus
one shared expert on every token, scaled by sigmoid(shared_expert_gate . x)."""
from __future__ import annotations

from megactllm.config import ModelConfig
from megactllm.model.families.moe import MoEFamily
from megactllm.model.families.qwen2 import Qwen2Family


class Qwen2MoeFamily(MoEFamily, Qwen2Family):
    name = "qwen2_moe"
    hf_architecture = "Qwen2MoeForCausalLM"
    hf_model_type = "qwen2_moe"
    gguf_architecture = "qwen2moe"
    shared_expert = True
    gguf_norm_topk_prob = False

    def _common_from_hf(self, hf: dict, where: str, refused: dict) -> dict:
        # transformers 5's Qwen2-MoE puts a bias on Q, K and V only when qkv_bias is true (the default)
        refused = {**refused, "qkv_bias": (bool(hf.get("qkv_bias", True)), True)}
        return super()._common_from_hf(hf, where, refused)

    def hf_config_from_model(self, model: ModelConfig) -> dict:
        return {**super().hf_config_from_model(model), "qkv_bias": True}
