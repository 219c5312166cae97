"""Recipes written for the flat `train` section (before the recipe was split into sections) keep
loading: each old key is read as its new one, and the run says so in one `note:` line.

The old run length was three optional keys of which the first set won (train_iters, then
train_tokens, then train_epochs); it is now one train.duration. An old recipe that sets several
keeps its old meaning (the winner), and the note names the keys that were ignored.
"""
from __future__ import annotations

from megactllm.config.section import ConfigError

# old train.<key> -> (section, key)
MOVED: dict[str, tuple[str, str]] = {
    "eval_interval": ("validation", "interval"),
    "eval_iters": ("validation", "iters"),
    "save": ("checkpoint", "save"),
    "save_interval": ("checkpoint", "interval"),
    "async_save": ("checkpoint", "async_save"),
    "load": ("checkpoint", "load"),
    "pretrained_checkpoint": ("checkpoint", "pretrained"),
    "reshard_optimizer": ("checkpoint", "reshard_optimizer"),
    "optimizer_checkpoint_format": ("checkpoint", "optimizer_format"),
    "max_consecutive_nonfinite": ("stability", "max_consecutive_nonfinite"),
    "skip_spiky_steps": ("stability", "skip_spiky_steps"),
    "spike_window": ("stability", "spike_window"),
    "spike_sigma": ("stability", "spike_sigma"),
    "spike_rollback_after": ("stability", "spike_rollback_after"),
    "spike_max_rollbacks": ("stability", "spike_max_rollbacks"),
    "skip_samples": ("stability", "skip_samples"),
    "log_interval": ("logging", "interval"),
    "log_dir": ("logging", "dir"),
    "tensorboard_dir": ("logging", "tensorboard_dir"),
    "peak_tflops": ("logging", "peak_tflops"),
    "straggler_ratio": ("logging", "straggler_ratio"),
    "wandb_project": ("wandb", "project"),
    "wandb_entity": ("wandb", "entity"),
    "wandb_dir": ("wandb", "dir"),
    "wandb_name": ("wandb", "name"),
    "exit_interval": ("run", "exit_interval"),
    "exit_duration_minutes": ("run", "exit_duration_minutes"),
    "lock_stale_minutes": ("run", "lock_stale_minutes"),
    "check_memory": ("run", "check_memory"),
    "dpo_beta": ("dpo", "beta"),
    "dpo_label_smoothing": ("dpo", "label_smoothing"),
    "dpo_loss_type": ("dpo", "loss_type"),
    "dpo_reference_logprobs": ("dpo", "reference_logprobs"),
}
# old train.<key> -> the unit of train.duration, in the old order of precedence
DURATION_KEYS: dict[str, str] = {"train_iters": "iterations", "train_tokens": "tokens", "train_epochs": "epochs"}


def is_old_key(section: str, key: str) -> bool:
    return section == "train" and (key in MOVED or key in DURATION_KEYS)


def migrate(raw: dict, where: str) -> tuple[dict, list[str]]:
    """`raw` (one recipe mapping) with old keys read as new ones, and what was read ("train.save ->
    checkpoint.save"). An old key and its new one both set in the same mapping is an error."""
    train = raw.get("train")
    if not isinstance(train, dict) or not any(is_old_key("train", k) for k in train):
        return raw, []
    out = {section: (dict(values) if isinstance(values, dict) else values) for section, values in raw.items()}
    new_train = out["train"]
    read: list[str] = []
    durations = [(k, new_train.pop(k)) for k in DURATION_KEYS if k in new_train]
    given = [(k, v) for k, v in durations if v is not None]
    if given:
        if "duration" in new_train and new_train["duration"] is not None:
            raise ConfigError(f"{where}: train.{given[0][0]} (an old key) and train.duration both give the run's "
                              "length: keep train.duration")
        key, value = given[0]
        new_train["duration"] = f"{value} {DURATION_KEYS[key]}"
        read.append(f"train.{key}={value} -> train.duration='{new_train['duration']}'")
        read += [f"train.{k} ignored (train.{key} came first, as before)" for k, _ in given[1:]]
    for key in [k for k in new_train if k in MOVED]:
        section, new_key = MOVED[key]
        target = out.get(section)
        if target is None:
            target = out[section] = {}
        elif not isinstance(target, dict):
            continue  # the section itself is malformed: the loader says so
        if new_key in target:
            raise ConfigError(f"{where}: train.{key} (an old key) and {section}.{new_key} are both set: keep "
                              f"{section}.{new_key}")
        target[new_key] = new_train.pop(key)
        read.append(f"train.{key} -> {section}.{new_key}")
    return out, read


def migrate_override(item: str) -> tuple[str, list[str]]:
    """One `section.key=value` override with an old key written as its new one."""
    dotted, sep, text = item.partition("=")
    section, _, key = dotted.partition(".")
    if not sep or not is_old_key(section, key):
        return item, []
    if key in DURATION_KEYS:
        value = text.strip()
        if value in ("", "null", "~", "None"):
            return "train.duration=null", [f"train.{key}={value} -> train.duration=null"]
        new = f"train.duration={value} {DURATION_KEYS[key]}"
        return new, [f"train.{key}={value} -> train.duration='{value} {DURATION_KEYS[key]}'"]
    new_section, new_key = MOVED[key]
    return f"{new_section}.{new_key}={text}", [f"train.{key} -> {new_section}.{new_key}"]


def note(read: list[str]) -> str:
    """The one line that tells the user how their old keys were read."""
    return ("note: the recipe uses old key names, read as " + "; ".join(read)
            + " (megactllm train --help-config lists the current keys)")
