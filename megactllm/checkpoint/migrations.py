"""Each older format version is read by one named migration to the next (raw JSON in, raw JSON out).

Bump FORMAT_VERSION on every change of what a checkpoint holds, and add the migration from the
previous version here, tested on a checkpoint written by the previous code (tests/data/checkpoints/).
"""
from __future__ import annotations

from typing import Callable

FORMAT_VERSION = 2


def v1_to_v2(raw: dict) -> dict:
    """Format 1 (megactllm up to commit 2c88b3a) -> 2 (a manifest of every file, callback states).

    Version 1 files were written by several revisions that all said 1; what they differ in is
    read here once, instead of guessed at each use:
    - a `make_vocab_size_divisible_by` that does not divide the rows was the layout's padding
      multiple (an earlier meaning), not the option (which always yields a multiple): unset;
    - no `optimizer_format` (before the distributed optimizer's formats were named): what the
      optimizer kind saved then, dp_reshardable with the distributed optimizer, else model_space;
    - no `stage`, `world_size`, `dtype`: pretrain, unknown, unknown;
    - no expert-parallel sizes (before MoE): EP=1, expert TP as TP (None);
    - no manifest: verification reads dist_checkpointing's own storage index instead (sizes only).
    """
    out = dict(raw)
    model = dict(out.get("model") or {})
    multiple = model.get("make_vocab_size_divisible_by")
    if multiple and int(model.get("vocab_size", 0)) % int(multiple):
        model["make_vocab_size_divisible_by"] = None
    out["model"] = model
    parallel = dict(out.get("parallel") or {})
    parallel.setdefault("expert_model_parallel_size", 1)
    parallel.setdefault("expert_tensor_parallel_size", None)
    out["parallel"] = parallel
    out.setdefault("stage", "pretrain")
    out.setdefault("world_size", None)
    out.setdefault("dtype", None)
    if out.get("has_optimizer") and not out.get("optimizer_format"):
        distributed = bool((out.get("parallel") or {}).get("use_distributed_optimizer"))
        out["optimizer_format"] = "dp_reshardable" if distributed else "model_space"
    out.setdefault("callbacks", {})
    out["manifest"] = None
    out["format_version"] = 2
    return out


# version -> the migration that reads it into version + 1
MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: v1_to_v2}


def upgrade(raw: dict, where: str) -> tuple[dict, int]:
    """`raw` read as the current version; returns (upgraded, the version it was written in)."""
    from megactllm.checkpoint.errors import CheckpointError

    version = raw.get("format_version")
    written = version
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format version {version!r} is not supported (this megactllm reads 1 to {FORMAT_VERSION}; "
            "a newer version was written by a newer megactllm: upgrade it)"
        )
    while version < FORMAT_VERSION:
        raw = MIGRATIONS[version](raw)
        version = raw["format_version"]
    return raw, written
