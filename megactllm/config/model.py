"""The recipe's model section: the model's shape, the single source of truth for it (checkpoints
store it; conversion, training and inference read it back from there). Declared like every other
section (megactllm.config.section); the other sections are in megactllm/config/schema.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from megactllm.config.section import Section, option

# Rows the built embedding is padded to (times TP), beyond vocab_size; masked, never saved in exports.
LAYOUT_VOCAB_MULTIPLE = 128

# The model families megactllm.model.families implements (that package holds the code for each).
Family = Literal["llama", "qwen2", "qwen3", "mistral", "qwen2_moe", "qwen3_moe"]


def _round_up(n: int, multiple: int) -> int:
    return ((n + multiple - 1) // multiple) * multiple


@dataclass
class ModelConfig(Section):
    """The model's shape. Starting from a checkpoint, these come from the checkpoint's metadata and a
    key the recipe also sets must agree with it."""

    NAME: ClassVar[str] = "model"

    # Checked where it is resolved (megactllm.config.load), since the architectures are ModelConfigs.
    arch: Optional[str] = option(None, "a named architecture (ctllm-2b, llama2-7b, qwen2.5-7b, llama3.1-8b, "
                                       "tiny) whose keys the recipe's other model keys override")
    num_layers: int = option(2, "transformer layers", min=1)
    hidden_size: int = option(64, "width of the residual stream", min=1)
    ffn_hidden_size: int = option(176, "width of the SwiGLU feed-forward layer", min=1)
    num_attention_heads: int = option(4, "query heads", min=1)
    num_query_groups: Optional[int] = option(None, "key/value heads (GQA); null: as many as query heads", min=1)
    kv_channels: Optional[int] = option(None, "per-head dimension; null: hidden_size / num_attention_heads", min=1)
    seq_length: int = option(128, "tokens per training sequence", min=1)
    max_position_embeddings: Optional[int] = option(None, "the longest position the model is meant for "
                                                          "(exported as HF max_position_embeddings)", min=1)
    vocab_size: int = option(32000, "embedding (and output) rows; the tokenizer may have fewer ids: the rows past "
                                    "its last id are padding, never produced, sampled or scored", min=1)
    make_vocab_size_divisible_by: Optional[int] = option(
        None, "a fresh model's rows are the tokenizer's ids rounded up to this multiple (not times TP, so "
              "checkpoints and exports do not depend on the layout); null: vocab_size as given", min=1)
    rotary_base: float = option(10000.0, "RoPE base frequency", above=0)
    norm_epsilon: float = option(1e-5, "RMSNorm epsilon", above=0)
    tie_word_embeddings: bool = option(False, "share the input embedding with the output layer")
    init_method_std: float = option(0.02, "standard deviation of the initial weights", above=0)
    hidden_dropout: float = option(0.0, "dropout after attention and MLP", min=0, below=1)
    attention_dropout: float = option(0.0, "dropout of the attention probabilities", min=0, below=1)
    add_bias_linear: bool = option(False, "biases on every linear layer")
    family: Family = option("llama", "the model family (megactllm.model.families): its HF mapping, "
                                     "layer flags and weight names; metadata written before families is llama")
    add_qkv_bias: bool = option(False, "biases on Q, K and V only (Qwen2)")
    qk_layernorm: bool = option(False, "RMSNorm on each head's queries and keys before RoPE (Qwen3)")
    rope_scaling: Optional[Literal["llama3"]] = option(
        None, "RoPE frequency scaling: llama3 (megatron-core's low/high frequency factors 1 and 4, original "
              "length 8192) or null")
    rope_scaling_factor: Optional[float] = option(None, "the scaling factor of rope_scaling (8 for Llama-3.1)", above=0)
    sliding_window: Optional[int] = option(None, "the HF model's attention window (Mistral); training refuses "
                                                 "longer sequences", min=1)
    # Mixture of experts (qwen3_moe, qwen2_moe).
    num_moe_experts: Optional[int] = option(None, "experts per MoE layer; null: a dense model", min=1)
    moe_router_topk: int = option(2, "experts each token is routed to", min=1)
    moe_ffn_hidden_size: Optional[int] = option(None, "width of each SwiGLU expert; null: ffn_hidden_size", min=1)
    moe_norm_topk_prob: bool = option(True, "renormalise the top-k routing probabilities to sum to 1 "
                                            "(HF norm_topk_prob)")
    moe_shared_expert_intermediate_size: Optional[int] = option(
        None, "width of one always-on shared expert (Qwen2-MoE); null: none", min=1)
    moe_shared_expert_gate: bool = option(False, "scale the shared expert by sigmoid(gate . x)")
    moe_layer_pattern: Optional[list[int]] = option(None, "per layer 1 (MoE) or 0 (dense SwiGLU of "
                                                          "ffn_hidden_size); null: every layer is MoE")
    moe_aux_loss_coeff: float = option(0.0, "load-balancing (Switch/GShard aux) loss coefficient (0: off)", min=0)
    moe_z_loss_coeff: Optional[float] = option(None, "router z-loss coefficient; null or 0: off", min=0)

    def check(self) -> None:
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            self.fail("hidden_size", f"must be a multiple of model.num_attention_heads={self.num_attention_heads} "
                                     "(or set model.kv_channels)")
        if self.num_attention_heads % self.num_kv_heads:
            self.fail("num_query_groups", f"must divide model.num_attention_heads={self.num_attention_heads}")
        if self.rope_scaling and self.rope_scaling_factor is None:
            self.fail("rope_scaling_factor", f"is needed by model.rope_scaling={self.rope_scaling!r}")
        if self.is_moe and self.moe_router_topk > self.num_moe_experts:
            self.fail("moe_router_topk", f"must not exceed model.num_moe_experts={self.num_moe_experts}")
        if self.moe_layer_pattern is not None:
            if len(self.moe_layer_pattern) != self.num_layers or not set(self.moe_layer_pattern) <= {0, 1}:
                self.fail("moe_layer_pattern", f"must hold a 0 or 1 for each of the model.num_layers={self.num_layers} "
                                               "layers")

    @property
    def is_moe(self) -> bool:
        return bool(self.num_moe_experts)

    def moe_layers(self) -> list:
        """Per layer: True where the MLP is a mixture of experts."""
        if not self.is_moe:
            return [False] * self.num_layers
        if self.moe_layer_pattern is None:
            return [True] * self.num_layers
        return [bool(x) for x in self.moe_layer_pattern]

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    def padded_vocab_size(self, tensor_parallel_size: int = 1) -> int:
        """The rows as built at a layout: vocab_size rounded up to LAYOUT_VOCAB_MULTIPLE x TP.

        A layout detail (the vocabulary-parallel split wants equal shards): these extra rows get a
        logit of -inf in the model and are never exported.
        """
        multiple = LAYOUT_VOCAB_MULTIPLE * tensor_parallel_size
        return _round_up(self.vocab_size, multiple)

    def rows_for_tokenizer(self, tokenizer_ids: int) -> int:
        """A fresh model's rows for a tokenizer: its ids rounded up to make_vocab_size_divisible_by, if set."""
        if not self.make_vocab_size_divisible_by:
            return self.vocab_size
        return _round_up(tokenizer_ids, self.make_vocab_size_divisible_by)
