"""What a model family provides: one place that knows how a family differs from plain LLaMA.

A family maps its Hugging Face config.json to a ModelConfig and back, names the megatron-core
flags its blocks need (QKV bias, per-head Q/K RMSNorm, RoPE scaling), maps weight names between
megatron-core's checkpoint keys and Hugging Face's, names its llama.cpp (GGUF) architecture and
tensors, and counts its parameters and FLOPs. Everything here is data about the model; the
tensor work (fusing Q/K/V, padding the vocabulary) stays in megactllm.convert.

The defaults describe a dense LLaMA-style decoder (RMSNorm, SwiGLU, RoPE, optional GQA and tied
embeddings); the ModelConfig flags switch on what a family adds, so most families override only
the HF config mapping.
"""
from __future__ import annotations

from typing import Optional

from megactllm.config import ModelConfig
from megactllm.errors import UserError


class ModelFamilyError(UserError, ValueError):
    """A config that no family converts exactly (unknown architecture, unsupported field)."""


# dist_checkpointing keys of GPTModel's sharded_state_dict (the same for the local and TE specs).
EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT_LAYER = "output_layer.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
QKV = "decoder.layers.self_attention.linear_qkv.weight"
QKV_BIAS = "decoder.layers.self_attention.linear_qkv.bias"
Q_NORM = "decoder.layers.self_attention.q_layernorm.weight"
K_NORM = "decoder.layers.self_attention.k_layernorm.weight"
PROJ = "decoder.layers.self_attention.linear_proj.weight"
FC1 = "decoder.layers.mlp.linear_fc1.weight"
FC2 = "decoder.layers.mlp.linear_fc2.weight"
INPUT_NORM = "decoder.layers.self_attention.linear_qkv.layer_norm_weight"
PRE_MLP_NORM = "decoder.layers.mlp.linear_fc1.layer_norm_weight"

HF_EMBEDDING = "model.embed_tokens.weight"
HF_LM_HEAD = "lm_head.weight"
HF_FINAL_NORM = "model.norm.weight"

# Per-layer megatron key -> the HF tensor names (within a layer) it is made of, in fused order.
BASE_LAYER_TENSORS = {
    QKV: ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    PROJ: ("self_attn.o_proj.weight",),
    FC1: ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    FC2: ("mlp.down_proj.weight",),
    INPUT_NORM: ("input_layernorm.weight",),
    PRE_MLP_NORM: ("post_attention_layernorm.weight",),
}
QKV_BIAS_TENSORS = {QKV_BIAS: ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")}
QK_NORM_TENSORS = {Q_NORM: ("self_attn.q_norm.weight",), K_NORM: ("self_attn.k_norm.weight",)}

# HF layer tensor -> llama.cpp tensor (blk.{i}.<name>); the same names in every llama.cpp
# architecture megactllm writes (llama, qwen2, qwen3).
GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GGUF_TOP_NAMES = {HF_EMBEDDING: "token_embd.weight", HF_FINAL_NORM: "output_norm.weight", HF_LM_HEAD: "output.weight"}


def rope_fields(hf: dict) -> tuple[float, dict]:
    """(RoPE base, scaling dict with rope_type) from transformers 4.x (rope_theta, rope_scaling) or 5.x
    (rope_parameters); a scaling of type "default" comes back as {}."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    merged = {**scaling, **{k: v for k, v in params.items() if k != "rope_theta"}}
    rope_type = merged.get("rope_type") or merged.get("type") or "default"
    if rope_type == "default":
        return theta, {}
    return theta, {**merged, "rope_type": rope_type}


class ModelFamily:
    """A dense LLaMA-style decoder. Subclasses set the class attributes and override what differs."""

    name: str = ""
    hf_architecture: str = ""
    hf_model_type: str = ""
    gguf_architecture: str = "llama"
    # The GGUF rotary layout: llama.cpp's llama graph rotates adjacent pairs (Q/K rows permuted on
    # export); its qwen2/qwen3 graphs rotate halves as HF does ("neox"), so rows stay as they are.
    gguf_permutes_qk: bool = True
    moe: bool = False  # a mixture-of-experts family (model/families/moe.py)

    # --- Hugging Face config.json <-> ModelConfig -------------------------------------------------
    def model_config_from_hf(self, hf: dict, where: str) -> ModelConfig:
        raise NotImplementedError

    def hf_config_from_model(self, model: ModelConfig) -> dict:
        raise NotImplementedError

    def _common_from_hf(self, hf: dict, where: str, refused: dict) -> dict:
        """ModelConfig fields every family reads alike; `refused`: field -> (value, the one accepted)."""
        checks = {"hidden_act": (hf.get("hidden_act", "silu"), "silu"), **refused}
        for name, (value, wanted) in checks.items():
            if value != wanted:
                raise ModelFamilyError(
                    f"{where}: {name}={value!r} is not supported for {self.hf_architecture} (megactllm computes "
                    f"{wanted!r} exactly; anything else would be a different model)"
                )
        heads = int(hf["num_attention_heads"])
        kv_heads = int(hf.get("num_key_value_heads") or heads)
        hidden = int(hf["hidden_size"])
        head_dim = int(hf.get("head_dim") or hidden // heads)
        positions = int(hf.get("max_position_embeddings", 4096))
        return dict(
            family=self.name,
            num_layers=int(hf["num_hidden_layers"]),
            hidden_size=hidden,
            ffn_hidden_size=int(hf["intermediate_size"]),
            num_attention_heads=heads,
            num_query_groups=None if kv_heads == heads else kv_heads,
            kv_channels=None if head_dim == hidden // heads else head_dim,
            seq_length=positions,
            max_position_embeddings=positions,
            vocab_size=int(hf["vocab_size"]),
            norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_method_std=float(hf.get("initializer_range", 0.02)),
            attention_dropout=float(hf.get("attention_dropout", 0.0)),
        )

    def _common_to_hf(self, model: ModelConfig) -> dict:
        return {
            "architectures": [self.hf_architecture],
            "model_type": self.hf_model_type,
            "vocab_size": model.vocab_size,
            "hidden_size": model.hidden_size,
            "intermediate_size": model.ffn_hidden_size,
            "num_hidden_layers": model.num_layers,
            "num_attention_heads": model.num_attention_heads,
            "num_key_value_heads": model.num_kv_heads,
            "head_dim": model.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": model.max_position_embeddings or model.seq_length,
            "rms_norm_eps": model.norm_epsilon,
            "rope_theta": model.rotary_base,
            "rope_parameters": {"rope_type": "default", "rope_theta": model.rotary_base},
            "tie_word_embeddings": model.tie_word_embeddings,
            "attention_dropout": model.attention_dropout,
            "initializer_range": model.init_method_std,
        }

    def check(self, model: ModelConfig, where: str) -> None:
        """Refuse a ModelConfig this family cannot build exactly (called before building a model)."""
        if model.is_moe and not self.moe:
            raise ModelFamilyError(
                f"{where}: model.num_moe_experts={model.num_moe_experts} but family {self.name} is dense; "
                "the mixture-of-experts families are qwen3_moe and qwen2_moe"
            )
        if model.sliding_window is not None and model.sliding_window < model.seq_length:
            raise ModelFamilyError(
                f"{where}: sliding_window={model.sliding_window} is shorter than the sequence length "
                f"{model.seq_length}; megactllm attends over the whole sequence, so the model would differ. "
                f"Train with model.seq_length<={model.sliding_window}"
            )
        if model.rope_scaling not in (None, "llama3"):
            raise ModelFamilyError(f"{where}: rope_scaling={model.rope_scaling!r}; megactllm computes None or 'llama3'")

    # --- megatron-core ---------------------------------------------------------------------------
    def transformer_config_kwargs(self, model: ModelConfig) -> dict:
        """TransformerConfig fields that depend on the family (the rest are common)."""
        return dict(kv_channels=model.head_dim, add_qkv_bias=model.add_qkv_bias, qk_layernorm=model.qk_layernorm)

    def gpt_model_kwargs(self, model: ModelConfig) -> dict:
        """GPTModel arguments for its rotary embedding."""
        base = float(model.rotary_base)
        kwargs = dict(position_embedding_type="rope", rotary_base=int(base) if base.is_integer() else base)
        if model.rope_scaling == "llama3":
            kwargs.update(rope_scaling=True, rope_scaling_factor=float(model.rope_scaling_factor))
        return kwargs

    # --- weight names ----------------------------------------------------------------------------
    def layer_tensors(self, model: ModelConfig) -> dict[str, tuple[str, ...]]:
        """Per-layer megatron key -> its HF tensor names (fused order), for this model's flags."""
        tensors = dict(BASE_LAYER_TENSORS)
        if model.add_qkv_bias:
            tensors.update(QKV_BIAS_TENSORS)
        if model.qk_layernorm:
            tensors.update(QK_NORM_TENSORS)
        return tensors

    def layer_tensors_at(self, model: ModelConfig, i: int) -> dict:
        """Layer i's tensors: (megatron key, expert index or None) -> its HF names (fused order).

        The same for every layer of a dense model; an MoE family's layers differ (dense layers mixed
        in) and its routed experts are one entry each (the megatron key has an expert axis)."""
        return {(key, None): names for key, names in self.layer_tensors(model).items()}

    def num_active_parameters(self, model: ModelConfig) -> int:
        """The parameters one token uses (all of them in a dense model)."""
        return self.num_parameters(model)

    def expert_parameters(self, model: ModelConfig) -> int:
        """Parameters in routed experts (split over expert-parallel ranks): none in a dense model."""
        return 0

    def megatron_layer_shape(self, model: ModelConfig, key: str) -> tuple:
        h, f, d = model.hidden_size, model.ffn_hidden_size, model.head_dim
        q, kv = model.num_attention_heads * d, model.num_kv_heads * d
        return {
            QKV: (q + 2 * kv, h), QKV_BIAS: (q + 2 * kv,), Q_NORM: (d,), K_NORM: (d,), PROJ: (h, q),
            FC1: (2 * f, h), FC2: (h, f), INPUT_NORM: (h,), PRE_MLP_NORM: (h,),
        }[key]

    def hf_layer_shape(self, model: ModelConfig, name: str) -> tuple:
        h, f, d = model.hidden_size, model.ffn_hidden_size, model.head_dim
        q, kv = model.num_attention_heads * d, model.num_kv_heads * d
        return {
            "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
            "self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,),
            "self_attn.q_norm.weight": (d,), "self_attn.k_norm.weight": (d,), "self_attn.o_proj.weight": (h, q),
            "mlp.gate_proj.weight": (f, h), "mlp.up_proj.weight": (f, h), "mlp.down_proj.weight": (h, f),
            "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        }[name]

    # --- llama.cpp -------------------------------------------------------------------------------
    def gguf_tensor_name(self, hf_name: str) -> Optional[str]:
        if hf_name in GGUF_TOP_NAMES:
            return GGUF_TOP_NAMES[hf_name]
        parts = hf_name.split(".", 3)  # model.layers.{i}.{rest}
        if len(parts) == 4 and parts[1] == "layers" and parts[3] in GGUF_LAYER_NAMES:
            return f"blk.{int(parts[2])}.{GGUF_LAYER_NAMES[parts[3]]}"
        return None

    def gguf_problem(self, model: ModelConfig) -> Optional[str]:
        """Why llama.cpp cannot run this model as this family's GGUF architecture, or None."""
        return None if model.rope_scaling is None else f"RoPE scaling {model.rope_scaling!r}"

    def gguf_metadata(self, model: ModelConfig, writer) -> None:
        """GGUF keys of the family beyond the common ones (an MoE family's expert counts)."""

    def gguf_extra_tensors(self, model: ModelConfig) -> dict:
        """GGUF tensors with no HF counterpart (name -> fp32 tensor), computed from the config."""
        return {}

    # --- counts ----------------------------------------------------------------------------------
    def _attention_parameters(self, model: ModelConfig) -> tuple[int, int]:
        """(tensor-parallel-split, replicated) parameters of one layer's attention: QKV (with its bias
        under add_qkv_bias), the projection, the Q/K norms and the layer's two RMSNorm weights."""
        h, d = model.hidden_size, model.head_dim
        q, kv = model.num_attention_heads * d, model.num_kv_heads * d
        split = h * (q + 2 * kv) + q * h + (q + 2 * kv if model.add_qkv_bias else 0)
        replicated = 2 * h + (2 * d if model.qk_layernorm else 0)
        return split, replicated

    def layer_parameters(self, model: ModelConfig) -> tuple[int, int]:
        """(tensor-parallel-split, replicated) parameters of one transformer layer."""
        h, f = model.hidden_size, model.ffn_hidden_size
        split, replicated = self._attention_parameters(model)
        split += 3 * h * f  # SwiGLU fc1 (2f) and fc2
        if model.add_bias_linear:  # QKV's bias (unless add_qkv_bias counted it) and fc1's split; proj's, fc2's not
            qkv = (model.num_attention_heads + 2 * model.num_kv_heads) * model.head_dim
            split += (0 if model.add_qkv_bias else qkv) + 2 * f
            replicated += 2 * h
        return split, replicated

    def num_parameters(self, model: ModelConfig) -> int:
        """Parameters of the unpadded model (the embedding counted once if tied)."""
        split, replicated = self.layer_parameters(model)
        embeddings = model.vocab_size * model.hidden_size * (1 if model.tie_word_embeddings else 2)
        return model.num_layers * (split + replicated) + embeddings + model.hidden_size

    def flops_per_token(self, model: ModelConfig, seq_length: Optional[int] = None) -> float:
        """Training FLOPs per token (forward + backward = 3x forward), attention included."""
        return self._training_flops(model, model.num_layers * 3 * model.hidden_size * model.ffn_hidden_size, seq_length)

    def _training_flops(self, model: ModelConfig, mlps: int, seq_length: Optional[int]) -> float:
        """3 x 2 FLOPs per weight a token passes (attention's, `mlps`: its MLPs' in all layers, the
        output layer's) plus the attention scores."""
        s = seq_length or model.seq_length
        h, l = model.hidden_size, model.num_layers
        q = model.num_attention_heads * model.head_dim
        kv = model.num_kv_heads * model.head_dim
        dense = l * (h * (q + 2 * kv) + q * h) + mlps + model.vocab_size * h
        attention = l * 2 * s * q  # QK^T and AV, per token (causal halving ignored, as Megatron does)
        return 3 * 2 * (dense + attention)
