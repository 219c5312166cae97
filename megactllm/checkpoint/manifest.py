"""The manifest: every file of a checkpoint with its size and a CRC-32, recorded at publish.

Sizes catch what a cluster does to checkpoints most often (a shard cut short by a partial copy,
an interrupted sync, a full disk; a file missing); the checksum catches changed bytes. CRC-32
(zlib, ~3 GB/s on one core: `python bench/checkpoint_checksum.py`) needs no extra package, and
the files are hashed by all ranks at once, each a share, so a save or a resume pays its
checkpoint's size / (ranks x 3 GB/s).

A checkpoint of format 1 has no manifest: its dist_checkpointing storage indexes (.metadata)
say which byte ranges of which files hold each tensor, which still finds a missing or short file.
"""
from __future__ import annotations

import os
import pickle
import zlib
from pathlib import Path
from typing import Iterable, Optional

from megactllm.checkpoint.layout import METADATA_FILE

CHECKSUM = "crc32"
_BLOCK = 8 << 20


def crc32_file(path: Path) -> str:
    crc = 0
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"


def checkpoint_files(checkpoint_dir: Path) -> list[str]:
    """Every regular file under the directory (posix paths relative to it), metadata excepted."""
    out = []
    for root, _, files in os.walk(checkpoint_dir):
        for name in files:
            rel = Path(root, name).relative_to(checkpoint_dir).as_posix()
            if rel != METADATA_FILE:
                out.append(rel)
    return sorted(out)


def share(files: list[str], sizes: dict, rank: int, world: int) -> list[str]:
    """This rank's part of the files, balanced by bytes (largest first onto the least loaded rank)."""
    loads = [0] * world
    mine = []
    for rel in sorted(files, key=lambda r: (-sizes.get(r, 0), r)):
        target = loads.index(min(loads))
        loads[target] += sizes.get(rel, 0) + 1
        if target == rank:
            mine.append(rel)
    return mine


def manifest_entries(checkpoint_dir: Path, files: Iterable[str], known: Optional[dict] = None) -> dict:
    """relative path -> [size, checksum] for the given files of the directory; `known` entries of the
    writer's own are taken for files of their size."""
    known = known or {}
    entries = {}
    for rel in files:
        size = (checkpoint_dir / rel).stat().st_size
        have = known.get(rel)
        entries[rel] = [size, have[1] if have is not None and have[0] == size else crc32_file(checkpoint_dir / rel)]
    return entries


def manifest_of(entries: dict) -> dict:
    return {"checksum": CHECKSUM, "files": dict(sorted(entries.items()))}


def check_files(checkpoint_dir: Path, manifest: dict, files: Iterable[str], checksums: bool) -> list[str]:
    """Problems of the given manifest files, one phrase each ('model/__0_0.distcp is 123 bytes, ...')."""
    problems = []
    recorded = manifest["files"]
    algorithm = manifest.get("checksum")
    for rel in files:
        size, checksum = recorded[rel]
        path = checkpoint_dir / rel
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{rel} is missing")
            continue
        except OSError as e:
            problems.append(f"{rel} cannot be read ({e.strerror})")
            continue
        if actual != size:
            problems.append(f"{rel} is {actual} bytes, {'cut short' if actual < size else 'longer'} (saved as {size})")
        elif checksums and algorithm == CHECKSUM:
            try:
                found = crc32_file(path)
            except OSError as e:
                problems.append(f"{rel} cannot be read ({e.strerror})")
                continue
            if found != checksum:
                problems.append(f"{rel} has changed bytes (crc32 {found}, saved as {checksum})")
    return problems


def selected(manifest: dict, parts: Optional[Iterable[str]]) -> list[str]:
    """The manifest's files under the given top-level parts (model, optimizer, ...), or all."""
    files = sorted(manifest["files"])
    if parts is None:
        return files
    prefixes = tuple(f"{p}/" for p in parts)
    return [rel for rel in files if rel.startswith(prefixes) or rel in parts]


def check_storage_indexes(checkpoint_dir: Path, parts: Iterable[str]) -> list[str]:
    """Format 1 (no manifest): each part's dist_checkpointing files against its storage index."""
    problems = []
    for part in parts:
        part_dir = checkpoint_dir / part
        if not part_dir.is_dir():
            problems.append(f"{part}/ is missing")
            continue
        index = part_dir / ".metadata"
        try:
            with open(index, "rb") as f:
                metadata = pickle.load(f)
        except FileNotFoundError:
            problems.append(f"{part}/.metadata is missing")
            continue
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
            problems.append(f"{part}/.metadata cannot be read ({type(e).__name__})")
            continue
        needed: dict[str, int] = {}
        for info in (getattr(metadata, "storage_data", None) or {}).values():
            rel = info.relative_path
            needed[rel] = max(needed.get(rel, 0), int(info.offset) + int(info.length))
        for rel, end in sorted(needed.items()):
            path = part_dir / rel
            if not path.is_file():
                problems.append(f"{part}/{rel} is missing")
            elif path.stat().st_size < end:
                problems.append(f"{part}/{rel} is {path.stat().st_size} bytes, cut short (its index needs {end})")
    return problems
