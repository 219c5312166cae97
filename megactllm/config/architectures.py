"""Named model shapes. A recipe's `model.arch` picks one; its other model keys override it."""
from __future__ import annotations

from megactllm.config.schema import ModelConfig
from megactllm.config.section import ConfigError

ARCHITECTURES: dict[str, ModelConfig] = {
    # CT-LLM 2B (arXiv 2404.04167): Baichuan-2 vocabulary of 125,696 pieces, untied embeddings.
    "ctllm-2b": ModelConfig(
        arch="ctllm-2b",
        num_layers=32,
        hidden_size=2048,
        ffn_hidden_size=5504,
        num_attention_heads=16,
        kv_channels=128,
        seq_length=4096,
        max_position_embeddings=4096,
        vocab_size=125696,
        rotary_base=10000.0,
        norm_epsilon=1e-5,
        tie_word_embeddings=False,
        init_method_std=0.02,
    ),
    # LLaMA-2-7B, the starting point of Linly-style Chinese continued pretraining.
    "llama2-7b": ModelConfig(
        arch="llama2-7b",
        num_layers=32,
        hidden_size=4096,
        ffn_hidden_size=11008,
        num_attention_heads=32,
        kv_channels=128,
        seq_length=4096,
        max_position_embeddings=4096,
        vocab_size=32000,
        rotary_base=10000.0,
        norm_epsilon=1e-5,
        tie_word_embeddings=False,
        init_method_std=0.02,
    ),
    # Qwen2.5-7B (Qwen2ForCausalLM): QKV bias, GQA with 4 KV heads, 152,064 embedding rows.
    "qwen2.5-7b": ModelConfig(
        arch="qwen2.5-7b",
        family="qwen2",
        num_layers=28,
        hidden_size=3584,
        ffn_hidden_size=18944,
        num_attention_heads=28,
        num_query_groups=4,
        seq_length=4096,
        max_position_embeddings=131072,
        vocab_size=152064,
        rotary_base=1000000.0,
        norm_epsilon=1e-6,
        tie_word_embeddings=False,
        add_qkv_bias=True,
    ),
    # Qwen3-30B-A3B (Qwen3MoeForCausalLM): 48 MoE layers of 128 experts (top 8, width 768, renormalised
    # top-k), no shared expert, QK norm, head dim 128, GQA with 4 KV heads; 30.5B parameters, 3.3B active.
    "qwen3-30b-a3b": ModelConfig(
        arch="qwen3-30b-a3b",
        family="qwen3_moe",
        num_layers=48,
        hidden_size=2048,
        ffn_hidden_size=6144,
        num_attention_heads=32,
        num_query_groups=4,
        kv_channels=128,
        seq_length=4096,
        max_position_embeddings=40960,
        vocab_size=151936,
        rotary_base=1000000.0,
        norm_epsilon=1e-6,
        tie_word_embeddings=False,
        qk_layernorm=True,
        num_moe_experts=128,
        moe_router_topk=8,
        moe_ffn_hidden_size=768,
        moe_norm_topk_prob=True,
        moe_aux_loss_coeff=0.001,
    ),
    # Qwen1.5-MoE-A2.7B (Qwen2MoeForCausalLM): 24 MoE layers of 60 experts (top 4, width 1408, not
    # renormalised) plus a shared expert of 5632 behind a sigmoid gate; QKV bias; 14.3B parameters.
    "qwen1.5-moe-a2.7b": ModelConfig(
        arch="qwen1.5-moe-a2.7b",
        family="qwen2_moe",
        num_layers=24,
        hidden_size=2048,
        ffn_hidden_size=5632,
        num_attention_heads=16,
        seq_length=4096,
        max_position_embeddings=8192,
        vocab_size=151936,
        rotary_base=1000000.0,
        norm_epsilon=1e-6,
        tie_word_embeddings=False,
        add_qkv_bias=True,
        num_moe_experts=60,
        moe_router_topk=4,
        moe_ffn_hidden_size=1408,
        moe_norm_topk_prob=False,
        moe_shared_expert_intermediate_size=5632,
        moe_shared_expert_gate=True,
        moe_aux_loss_coeff=0.001,
    ),
    # Llama-3.1-8B: GQA with 8 KV heads, RoPE 500000 with llama3 scaling (factor 8).
    "llama3.1-8b": ModelConfig(
        arch="llama3.1-8b",
        num_layers=32,
        hidden_size=4096,
        ffn_hidden_size=14336,
        num_attention_heads=32,
        num_query_groups=8,
        seq_length=8192,
        max_position_embeddings=131072,
        vocab_size=128256,
        rotary_base=500000.0,
        norm_epsilon=1e-5,
        tie_word_embeddings=False,
        rope_scaling="llama3",
        rope_scaling_factor=8.0,
    ),
    # A model small enough for CPU tests; 4 layers so PP=2 with 2 virtual stages has a layer each.
    "tiny": ModelConfig(
        arch="tiny",
        num_layers=4,
        hidden_size=64,
        ffn_hidden_size=176,
        num_attention_heads=4,
        num_query_groups=None,
        seq_length=128,
        max_position_embeddings=128,
        vocab_size=64000,
        rotary_base=10000.0,
        norm_epsilon=1e-5,
        tie_word_embeddings=False,
        init_method_std=0.02,
    ),
}


def get_architecture(name: str) -> ModelConfig:
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"model.arch={name!r}: must be one of {', '.join(ARCHITECTURES)} (or null)") from None
