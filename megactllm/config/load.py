"""Reading a recipe: YAML file, then `section.key=value` overrides, then one checked Config.

    cfg = load_config("examples/configs/tiny_cpu.yaml", ["train.duration=100 iterations"])

Old key names (the flat train section) are read as their new ones (megactllm.config.legacy) and
`cfg.notes` holds the one `note:` line that says so; the entry points print it.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from megactllm.common import recipe
from megactllm.config import legacy
from megactllm.config.schema import SECTIONS, Config, GRPOConfig, ModelConfig
from megactllm.config.section import ConfigError, _show

_OVERRIDE_EXAMPLE = "train.duration='100 iterations'"


def _build_section(cls, values, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: section {cls.NAME} must be a mapping of keys, got {_show(values)}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        hint = "" if cls.NAME != "train" else " (megactllm train --help-config lists every key)"
        raise ConfigError(f"{where}: unknown key(s) {unknown} in section {cls.NAME}; known keys: {known}{hint}")
    return cls(**values)


def model_config_from_dict(values: dict, where: str = "model config") -> ModelConfig:
    """ModelConfig from a mapping; `arch` picks a named architecture that the other keys override."""
    values = dict(values)
    arch = values.get("arch")
    if arch is not None:
        from megactllm.config.architectures import get_architecture

        base = dataclasses.asdict(get_architecture(arch))
        base.update(values)
        values = base
    return _build_section(ModelConfig, values, where)


def config_from_dict(raw: dict, where: str = "config") -> Config:
    """A checked Config from a recipe mapping (old key names are read as new ones: cfg.notes says so)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {_show(raw)}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; sections: {list(SECTIONS)}")
    raw, read = legacy.migrate(raw, where)
    sections = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name)
        values = {} if values is None else values
        if name == "model" and isinstance(values, dict):
            sections[name] = model_config_from_dict(values, where)
        else:
            sections[name] = _build_section(cls, values, where)
    cfg = Config(**sections)
    if read:
        cfg.notes.append(legacy.note(read))
    return cfg


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set each `section.key=value` in the recipe mapping `raw` (old key names read as new ones)."""
    return recipe.apply_overrides(raw, [legacy.migrate_override(o)[0] for o in overrides], SECTIONS,
                                  ConfigError, _OVERRIDE_EXAMPLE)


def _origins(raw: dict, overridden: set) -> dict:
    """section.key -> who set it; a named architecture sets every model field it defines."""
    origins = {}
    model = raw.get("model") or {}
    if model.get("arch"):
        from megactllm.config.architectures import get_architecture

        arch_fields = dataclasses.asdict(get_architecture(model["arch"]))
        origins.update({f"model.{k}": f"model.arch={model['arch']}" for k in arch_fields if k != "arch"})
    for section, values in raw.items():
        for key in values or {}:
            name = f"{section}.{key}"
            origins[name] = "an override" if name in overridden else "the recipe"
    return origins


_PATH_KEYS = ("data_path", "train_data_path", "valid_data_path", "test_data_path")


def _one_data_source(raw: dict, overridden: set) -> list[str]:
    """One source of training data: data.blend_schedule or the data paths, never both (in place).

    A value given on the command line is the user's intent: command-line paths replace a schedule
    that came from the recipe file (and a command-line schedule replaces the recipe's paths), with
    a note saying so. Both from the same place (both on the command line, or both in the recipe)
    is an error naming them. Returns the notes.
    """
    d = raw.get("data")
    if not isinstance(d, dict):
        return []
    paths = [k for k in _PATH_KEYS if d.get(k)]
    if not d.get("blend_schedule") or not paths:
        return []

    def by(key: str) -> str:
        return "an override" if f"data.{key}" in overridden else "the recipe"

    named = ", ".join(f"data.{k} (from {by(k)})" for k in paths)
    if all(by(k) == "an override" for k in paths) and by("blend_schedule") != "an override":
        d["blend_schedule"] = []
        return [f"note: {named} replaces the recipe's data.blend_schedule: training reads the given data only"]
    if by("blend_schedule") == "an override" and all(by(k) != "an override" for k in paths):
        for k in paths:
            d[k] = []
        return [f"note: data.blend_schedule (from the command line) replaces the recipe's {', '.join('data.' + k for k in paths)}"]
    raise ConfigError(
        f"data.blend_schedule (from {by('blend_schedule')}) and {named} both name the training data: give one "
        "(data.blend_schedule's phases, or the paths; validation under a schedule reads data.split of its final phase)"
    )


def _grpo_batch(raw: dict) -> None:
    """A GRPO step reads grpo.prompts_per_step prompts: the global batch follows it unless the recipe
    sets one (then the two must agree, which the schema checks)."""
    train, grpo = raw.get("train"), raw.get("grpo")
    if isinstance(train, dict) and train.get("stage") == "grpo" and "global_batch_size" not in train:
        per_step = grpo.get("prompts_per_step") if isinstance(grpo, dict) else None
        train["global_batch_size"] = per_step if per_step is not None else GRPOConfig().prompts_per_step


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """The checked Config of the recipe at `path` (none: the defaults) with `overrides` applied."""
    where = path or "config"
    raw = recipe.read_recipe(path, ConfigError, "config file") if path else {}
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; sections: {list(SECTIONS)}")
    # The file's old keys first, so that an override (old or new name) replaces the file's value.
    raw, read = legacy.migrate(raw, where)
    migrated = [legacy.migrate_override(o) for o in overrides or []]
    for _, said in migrated:
        read += said
    new_overrides = [o for o, _ in migrated]
    raw = recipe.apply_overrides(raw, new_overrides, SECTIONS, ConfigError, _OVERRIDE_EXAMPLE)
    overridden = {item.split("=", 1)[0] for item in new_overrides}
    data_notes = _one_data_source(raw, overridden)
    _grpo_batch(raw)
    cfg = config_from_dict(raw, where=where)
    cfg.notes[:] = ([legacy.note(read)] if read else []) + data_notes
    # Which keys the user set (recipe or override) and which are defaults: a checkpoint's metadata
    # fills the defaults and must agree with the rest (megactllm.checkpoint.shape).
    cfg._origins = _origins(raw, overridden)
    return cfg
