"""ModelConfig <-> Hugging Face config.json (through the model's family), and generation_config.json.

Only what megatron-core's GPTModel (as megactllm builds it) computes exactly is accepted on
import (see megactllm.model.families): anything else is refused with the field that is
unsupported, never converted into a silently different model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from megactllm.config import ModelConfig
from megactllm.convert.errors import ConversionError
from megactllm.model import families


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


def model_config_from_hf(hf: dict, where: str) -> ModelConfig:
    """The ModelConfig of an HF config.json dict (any family megactllm converts); `where` (its path)
    goes into every error."""
    try:
        return families.model_config_from_hf(hf, where)
    except families.ModelFamilyError as e:
        raise ConversionError(str(e)) from None


def hf_config_from_model(
    model: ModelConfig,
    dtype: torch.dtype,
    bos_token_id: Optional[int] = None,
    eos_token_id: Optional[int] = None,
    pad_token_id: Optional[int] = None,
) -> dict:
    """config.json for the model's family's HF class; readable by transformers 4.x (rope_theta,
    torch_dtype) and 5.x."""
    if model.add_bias_linear:
        raise ConversionError("models with biases on every linear layer have no Hugging Face equivalent; export is not supported")
    try:
        config = families.family_of(model).hf_config_from_model(model)
    except families.ModelFamilyError as e:
        raise ConversionError(str(e)) from None
    return {
        **config,
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
