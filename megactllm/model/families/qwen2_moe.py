"""Qwen2-MoE (Qwen2MoeForCausalLM: Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen2's attention (QKV bias)
with mixture-of-experts MLPs (Qwen1.5-MoE: 60 experts, top 4, probabilities not renormalised) plus
one shared expert on every token, scaled by sigmoid(shared_expert_gate . x)."""
from __future__ import annotations

from megactllm.config import ModelConfig
from megactllm.model.families.llama import rope_from_hf
from megactllm.model.families.moe import MoEFamily


class Qwen2MoeFamily(MoEFamily):
    name = "qwen2_moe"
    hf_architecture = "Qwen2MoeForCausalLM"
    hf_model_type = "qwen2_moe"
    gguf_architecture = "qwen2moe"
    gguf_permutes_qk = False
    shared_expert = True
    gguf_norm_topk_prob = False

    def model_config_from_hf(self, hf: dict, where: str) -> ModelConfig:
        refused = {
            "use_sliding_window": (bool(hf.get("use_sliding_window", False)), False),
            # transformers 5's Qwen2-MoE puts a bias on Q, K and V only when qkv_bias is true (the default)
            "qkv_bias": (bool(hf.get("qkv_bias", True)), True),
        }
        fields = self._common_from_hf(hf, where, refused)
        fields.update(self._moe_from_hf(hf, where, fields["num_layers"]))
        return ModelConfig(**fields, add_qkv_bias=True, **rope_from_hf(hf, where, allow_llama3=False))

    def hf_config_from_model(self, model: ModelConfig) -> dict:
        positions = model.max_position_embeddings or model.seq_length
        return {
            **self._common_to_hf(model),
            **self._moe_to_hf(model),
            "use_sliding_window": False,
            "sliding_window": positions,
            "max_window_layers": model.num_layers,
            "qkv_bias": True,
        }
