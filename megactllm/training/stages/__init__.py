"""Which Task runs for `train.stage`: a name -> factory registry the shared loop looks up.

Built-in stages are imported lazily, so a checkout without sft.py/dpo.py still pretrains, and a
stage's own imports (e.g. chat templates) cost nothing for the others. A new stage either adds a
line to _BUILTIN (module path and factory name) or calls `register_stage` before the loop runs:

    from megactllm.training.stages import register_stage
    register_stage("my_stage", lambda cfg: MyTask(cfg))

A factory takes the run's Config and returns an object implementing megactllm.training.stages.task.Task.
"""
from __future__ import annotations

import importlib
from typing import Callable

from megactllm.config import Config
from megactllm.config.schema import allow_stage
from megactllm.errors import UserError

TaskFactory = Callable[[Config], object]

# stage name -> (module, factory attribute): imported on first use.
_BUILTIN: dict[str, tuple[str, str]] = {
    "pretrain": ("megactllm.training.stages.pretrain", "PretrainTask"),
    "sft": ("megactllm.training.stages.sft", "SFTTask"),
    "dpo": ("megactllm.training.stages.dpo.task", "DPOTask"),
    "grpo": ("megactllm.training.stages.grpo.task", "GRPOTask"),
}
_REGISTERED: dict[str, TaskFactory] = {}


class UnknownStageError(UserError, ValueError):
    pass


def register_stage(name: str, factory: TaskFactory) -> None:
    """Make `train.stage=name` build its Task with `factory(cfg)` (replaces a previous registration)."""
    _REGISTERED[name] = factory
    allow_stage(name)


def available_stages() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def get_task_factory(name: str) -> TaskFactory:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _BUILTIN:
        raise UnknownStageError(f"unknown train.stage {name!r}; available: {available_stages()}")
    module_name, attr = _BUILTIN[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise UnknownStageError(f"train.stage={name!r} needs {module_name}, which is not in this checkout") from None
        raise
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UnknownStageError(f"{module_name} defines no {attr} for train.stage={name!r}") from None


def build_task(cfg: Config):
    """The Task for cfg.train.stage."""
    return get_task_factory(cfg.train.stage)(cfg)
