"""The run's configuration: recipe sections as dataclasses (schema.py) and the named model shapes
(architectures.py) that a recipe's `model.arch` picks."""
from megactllm.config.architectures import ARCHITECTURES, get_architecture
from megactllm.config.schema import (
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    GRPOConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    model_config_from_dict,
)

__all__ = [
    "ARCHITECTURES",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GRPOConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "get_architecture",
    "load_config",
    "model_config_from_dict",
]
