"""The run's recipe: typed sections (schema.py; how a section is declared and checked: section.py),
read once from YAML and overrides (load.py, old key names: legacy.py), the named model shapes that
`model.arch` picks (architectures.py), and the reference of every key (reference.py)."""
from megactllm.config.architectures import ARCHITECTURES, get_architecture
from megactllm.config.load import apply_overrides, config_from_dict, load_config, model_config_from_dict
from megactllm.config.schema import (
    SECTIONS,
    CheckpointConfig,
    Config,
    DataConfig,
    DpoConfig,
    Duration,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RunConfig,
    StabilityConfig,
    TrainConfig,
    ValidationConfig,
    WandbConfig,
    check_warmup,
)
from megactllm.config.section import ConfigError, Section, option

__all__ = [
    "ARCHITECTURES",
    "SECTIONS",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DpoConfig",
    "Duration",
    "EvalConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "RunConfig",
    "Section",
    "StabilityConfig",
    "TrainConfig",
    "ValidationConfig",
    "WandbConfig",
    "apply_overrides",
    "check_warmup",
    "config_from_dict",
    "get_architecture",
    "load_config",
    "model_config_from_dict",
    "option",
]
