"""megatron-core GPTModel for a ModelConfig, and the named architectures."""
from megactllm.config.architectures import ARCHITECTURES, get_architecture
from megactllm.model.builder import (
    build_model,
    build_model_chunk,
    build_transformer_config,
    decoder_block_spec,
    layer_spec,
    transformer_engine_available,
)

__all__ = [
    "ARCHITECTURES",
    "build_model",
    "build_model_chunk",
    "build_transformer_config",
    "decoder_block_spec",
    "get_architecture",
    "layer_spec",
    "transformer_engine_available",
]
