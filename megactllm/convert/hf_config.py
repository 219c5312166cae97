"""ModelConfig <-> Hugging Face LLaMA config.json, and generation_config.json.

Only what megatron-core's GPTModel (as megactllm builds it) computes exactly is accepted on
import: LLaMA blocks with SwiGLU, RMSNorm, plain RoPE (no scaling), no biases. Anything else
is refused with the field that is unsupported, never converted into a silently different model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from megactllm.config import ModelConfig
from megactllm.convert.errors import ConversionError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_NAME_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES[dtype]


def dtype_from_name(name: str) -> torch.dtype:
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
    name = aliases.get(name, name)
    if name not in _NAME_DTYPES:
        raise ConversionError(f"dtype {name!r} is not supported; use one of {sorted(_NAME_DTYPES)}")
    return _NAME_DTYPES[name]


def read_hf_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path} is missing: {model_dir} is not a Hugging Face model directory") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path} is not valid JSON: {e}") from None


def _rope_settings(hf: dict, where: str) -> float:
    """RoPE base from either transformers 4.x (rope_theta, rope_scaling) or 5.x (rope_parameters)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ConversionError(
            f"{where}: RoPE scaling {rope_type!r} is not supported (megactllm models use plain RoPE); "
            "remove the scaling or convert a model without it"
        )
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config_from_hf(hf: dict, where: str) -> ModelConfig:
    """The ModelConfig of an HF LLaMA config.json dict; `where` (its path) goes into every error."""
    architectures = hf.get("architectures") or []
    if hf.get("model_type") != "llama" or (architectures and architectures[0] not in SUPPORTED_ARCHITECTURES):
        raise ConversionError(
            f"{where}: architecture {architectures or hf.get('model_type')!r} is not supported; "
            f"megactllm converts {list(SUPPORTED_ARCHITECTURES)} (model_type 'llama')"
        )
    unsupported = {
        "hidden_act": (hf.get("hidden_act", "silu"), "silu"),
        "attention_bias": (bool(hf.get("attention_bias", False)), False),
        "mlp_bias": (bool(hf.get("mlp_bias", False)), False),
        "pretraining_tp": (hf.get("pretraining_tp", 1) or 1, 1),
    }
    for field, (value, wanted) in unsupported.items():
        if value != wanted:
            raise ConversionError(f"{where}: {field}={value!r} is not supported (megactllm needs {wanted!r})")
    heads = int(hf["num_attention_heads"])
    kv_heads = int(hf.get("num_key_value_heads") or heads)
    hidden = int(hf["hidden_size"])
    head_dim = int(hf.get("head_dim") or hidden // heads)
    return ModelConfig(
        num_layers=int(hf["num_hidden_layers"]),
        hidden_size=hidden,
        ffn_hidden_size=int(hf["intermediate_size"]),
        num_attention_heads=heads,
        num_query_groups=None if kv_heads == heads else kv_heads,
        kv_channels=None if head_dim == hidden // heads else head_dim,
        seq_length=int(hf.get("max_position_embeddings", 4096)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        vocab_size=int(hf["vocab_size"]),
        rotary_base=_rope_settings(hf, where),
        norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_method_std=float(hf.get("initializer_range", 0.02)),
        attention_dropout=float(hf.get("attention_dropout", 0.0)),
    )


def hf_config_from_model(
    model: ModelConfig,
    dtype: torch.dtype,
    bos_token_id: Optional[int] = None,
    eos_token_id: Optional[int] = None,
    pad_token_id: Optional[int] = None,
) -> dict:
    """config.json for LlamaForCausalLM; readable by transformers 4.x (rope_theta, torch_dtype) and 5.x."""
    if model.add_bias_linear:
        raise ConversionError("models with linear biases have no LlamaForCausalLM equivalent; export is not supported")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
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
        "attention_bias": False,
        "attention_dropout": model.attention_dropout,
        "mlp_bias": False,
        "initializer_range": model.init_method_std,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "dtype": dtype_name(dtype),
        "torch_dtype": dtype_name(dtype),
        "use_cache": True,
    }


def generation_config(bos_token_id: Optional[int], eos_token_id: Optional[int], pad_token_id: Optional[int]) -> dict:
    config = {"_from_model_config": False, "do_sample": False}
    for key, value in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        if value is not None:
            config[key] = value
    return config
