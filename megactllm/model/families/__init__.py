"""Model families: what each one changes in megatron-core's GPTModel, in Hugging Face and in GGUF.

    family = family_of(model_config)          # by ModelConfig.family
    family = family_for_hf(hf_config, where)  # by config.json's architectures / model_type

Adding a family is one file here (a ModelFamily subclass) plus its entry in FAMILIES and its name in
the recipe's model.family choices (megactllm.config.model.Family).
"""
from __future__ import annotations

from megactllm.config import ModelConfig
from megactllm.model.families.base import ModelFamily, ModelFamilyError
from megactllm.model.families.llama import LlamaFamily
from megactllm.model.families.mistral import MistralFamily
from megactllm.model.families.qwen2 import Qwen2Family
from megactllm.model.families.qwen2_moe import Qwen2MoeFamily
from megactllm.model.families.qwen3 import Qwen3Family
from megactllm.model.families.qwen3_moe import Qwen3MoeFamily

FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (LlamaFamily(), Qwen2Family(), Qwen3Family(), MistralFamily(), Qwen3MoeFamily(), Qwen2MoeFamily())
}


def family_of(model: ModelConfig) -> ModelFamily:
    try:
        return FAMILIES[model.family]
    except KeyError:
        raise ModelFamilyError(f"model family {model.family!r} is unknown; known: {sorted(FAMILIES)}") from None


def family_for_hf(hf: dict, where: str) -> ModelFamily:
    """The family of an HF config.json: its architectures[0] and model_type must both be the family's."""
    architectures = hf.get("architectures") or []
    model_type = hf.get("model_type")
    by_arch = {f.hf_architecture: f for f in FAMILIES.values()}
    family = by_arch.get(architectures[0]) if architectures else None
    if family is None and not architectures:
        family = next((f for f in FAMILIES.values() if f.hf_model_type == model_type), None)
    if family is None or family.hf_model_type != model_type:
        known = [f"{f.hf_architecture} (model_type {f.hf_model_type!r})" for f in FAMILIES.values()]
        raise ModelFamilyError(
            f"{where}: architecture {architectures or model_type!r} with model_type {model_type!r} is not supported; "
            f"megactllm converts {known}"
        )
    return family


def model_config_from_hf(hf: dict, where: str) -> ModelConfig:
    return family_for_hf(hf, where).model_config_from_hf(hf, where)


__all__ = ["FAMILIES", "ModelFamily", "ModelFamilyError", "family_for_hf", "family_of", "model_config_from_hf"]
