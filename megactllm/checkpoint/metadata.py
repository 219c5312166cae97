"""A checkpoint's metadata (megactllm.json): what the weights are, how they were saved, the run's
counters and callback states, and the manifest of every other file. Read through the migrations,
so every caller sees the current version."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from megactllm.checkpoint.errors import CheckpointError
from megactllm.checkpoint.layout import METADATA_FILE, TOKENIZER_DIR, resolve_checkpoint_dir
from megactllm.checkpoint.migrations import FORMAT_VERSION, upgrade
from megactllm.config import Config, ModelConfig, model_config_from_dict

# Fields of ModelConfig that fix the shapes of the weights; the rest (sequence length, dropout,
# init) may change between runs that share a checkpoint.
SHAPE_FIELDS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_kv_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "add_bias_linear",
    "family",
    "add_qkv_bias",
    "qk_layernorm",
    "num_moe_experts",
    "moe_ffn_hidden_size",
    "moe_shared_expert_intermediate_size",
    "moe_layer_pattern",
)


@dataclass
class CheckpointMetadata:
    path: Path
    format_version: int
    iteration: int
    model_config: ModelConfig
    tokenizer: dict = field(default_factory=dict)
    parallel: dict = field(default_factory=dict)
    train_state: dict = field(default_factory=dict)
    # name -> the state a training callback saved (its own, JSON)
    callbacks: dict = field(default_factory=dict)
    has_optimizer: bool = False
    stage: str = "pretrain"
    world_size: Optional[int] = None
    optimizer_format: Optional[str] = None
    dtype: Optional[str] = None  # "bf16", "fp16" or "fp32": the precision the weights were trained in
    # {"checksum": "crc32", "files": {relative path: [size, checksum]}}; None for format 1
    manifest: Optional[dict] = None
    written_version: int = FORMAT_VERSION  # the version on disk, before the migrations

    @property
    def tokenizer_file(self) -> Optional[Path]:
        name = self.tokenizer.get("file")
        return self.path / TOKENIZER_DIR / name if name else None


def dtype_name(cfg: Config) -> str:
    return "bf16" if cfg.optim.bf16 else "fp16" if cfg.optim.fp16 else "fp32"


def build_metadata(
    iteration: int,
    cfg: Config,
    *,
    tokenizer_file: Optional[str] = None,
    has_optimizer: bool = False,
    optimizer_format: Optional[str] = None,
    world_size: int = 1,
    train_state: Optional[dict] = None,
    callbacks: Optional[dict] = None,
) -> dict:
    """The metadata of one save, as JSON (the manifest is added when the files are published)."""
    tokenizer: dict = {"type": cfg.data.tokenizer_type}
    if tokenizer_file:
        tokenizer["file"] = Path(tokenizer_file).name
    return {
        "format_version": FORMAT_VERSION,
        "iteration": iteration,
        "stage": cfg.train.stage,
        "model": asdict(cfg.model),
        "tokenizer": tokenizer,
        "parallel": asdict(cfg.parallel),
        "dtype": dtype_name(cfg),
        "has_optimizer": has_optimizer,
        "optimizer_format": optimizer_format,
        "world_size": world_size,
        "train_state": dict(train_state or {}),
        "callbacks": dict(callbacks or {}),
    }


def read_raw_metadata(checkpoint_dir: Path) -> dict:
    """megactllm.json of an iteration directory as the current version's JSON."""
    meta_path = checkpoint_dir / METADATA_FILE
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path} is not valid JSON: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} cannot be read: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{meta_path} should hold a JSON object")
    upgraded, written = upgrade(raw, str(meta_path))
    upgraded["_written_version"] = written
    return upgraded


def read_metadata(path: str | os.PathLike) -> CheckpointMetadata:
    """The metadata of a checkpoint (an iteration directory, or a run directory's latest)."""
    ckpt = resolve_checkpoint_dir(path)
    raw = read_raw_metadata(ckpt)
    meta_path = ckpt / METADATA_FILE
    try:
        return CheckpointMetadata(
            path=ckpt,
            format_version=raw["format_version"],
            iteration=int(raw["iteration"]),
            model_config=model_config_from_dict(raw["model"], str(meta_path)),
            tokenizer=raw.get("tokenizer", {}),
            parallel=raw.get("parallel", {}),
            train_state=raw.get("train_state", {}),
            callbacks=raw.get("callbacks", {}),
            has_optimizer=bool(raw.get("has_optimizer", False)),
            stage=raw["stage"],
            world_size=raw["world_size"],
            optimizer_format=raw["optimizer_format"] if raw.get("has_optimizer") else None,
            dtype=raw["dtype"],
            manifest=raw["manifest"],
            written_version=raw["_written_version"],
        )
    except KeyError as e:
        raise CheckpointError(f"{meta_path} lacks the field {e.args[0]!r}") from None


def check_model_matches(saved: ModelConfig, current: ModelConfig, where: str) -> None:
    """Refuse to load weights into a model of another shape, naming every field that differs."""
    diffs = [
        f"{name}: checkpoint {getattr(saved, name)} vs model {getattr(current, name)}"
        for name in SHAPE_FIELDS
        if getattr(saved, name) != getattr(current, name)
    ]
    if diffs:
        raise CheckpointError(f"{where} was saved for a model of another shape: " + "; ".join(diffs))
