"""Where a checkpoint's files live, and which iteration of a run directory is the latest.

    <dir>/latest_checkpointed_iteration.txt    the newest complete iteration (replaced atomically)
    <dir>/iter_0000100/megactllm.json           metadata and the manifest of every other file; written last
    <dir>/iter_0000100/model/                   dist_checkpointing of the model (layout-free)
    <dir>/iter_0000100/optimizer/               dist_checkpointing of the optimizer (when saved)
    <dir>/iter_0000100/rng/rank_00000.pt        each rank's random generators (when saved)
    <dir>/iter_0000100/tokenizer/               a copy of the tokenizer and its side files
    <dir>/iter_0000100.partial/                 a save in progress (or interrupted): never loaded
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from megactllm.checkpoint.errors import CheckpointError

METADATA_FILE = "megactllm.json"
LATEST_FILE = "latest_checkpointed_iteration.txt"
RNG_DIR = "rng"
TOKENIZER_DIR = "tokenizer"
PARTIAL_SUFFIX = ".partial"
_ITERATION_DIR = re.compile(r"^iter_(\d{7,})$")


def iteration_dir(save_dir: str | os.PathLike, iteration: int) -> Path:
    return Path(save_dir) / f"iter_{iteration:07d}"


def partial_dir(save_dir: str | os.PathLike, iteration: int) -> Path:
    final = iteration_dir(save_dir, iteration)
    return final.with_name(final.name + PARTIAL_SUFFIX)


def rng_file(checkpoint_dir: Path, rank: int) -> Path:
    return checkpoint_dir / RNG_DIR / f"rank_{rank:05d}.pt"


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / METADATA_FILE).is_file()


def holds_checkpoints(path: str | os.PathLike) -> bool:
    """A run directory with a latest pointer, or one iteration directory."""
    p = Path(path)
    return (p / LATEST_FILE).is_file() or is_checkpoint_dir(p)


def read_latest_pointer(save_dir: str | os.PathLike) -> Optional[int]:
    """The iteration the latest pointer names, or None when the directory holds no pointer yet."""
    latest = Path(save_dir) / LATEST_FILE
    if not latest.is_file():
        return None
    text = latest.read_text().strip()
    try:
        return int(text)
    except ValueError:
        raise CheckpointError(f"{latest} should hold an iteration number, found {text!r}") from None


def published_iterations(save_dir: str | os.PathLike) -> list[int]:
    """Iterations of a run directory that were published (metadata present), oldest first."""
    found = []
    root = Path(save_dir)
    if not root.is_dir():
        return found
    for entry in root.iterdir():
        m = _ITERATION_DIR.match(entry.name)
        if m and (entry / METADATA_FILE).is_file():
            found.append(int(m.group(1)))
    return sorted(found)


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """An iteration directory, given either it or a run directory with a latest pointer."""
    path = Path(path)
    if is_checkpoint_dir(path):
        return path
    iteration = read_latest_pointer(path)
    if iteration is not None:
        resolved = iteration_dir(path, iteration)
        if not is_checkpoint_dir(resolved):
            raise CheckpointError(
                f"{path / LATEST_FILE} points at iteration {iteration} but {resolved / METADATA_FILE} is missing"
            )
        return resolved
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raise CheckpointError(f"{path} is not a megactllm checkpoint: it has neither {METADATA_FILE} nor {LATEST_FILE}")
