"""The output directory: where each stage's files live, and its completion markers.

A unit of work (one shard, one band) writes its outputs under temporary names, renames them,
and only then writes its `.done` marker. A unit with a marker is never redone; one without
is redone from scratch, so a killed job leaves nothing half-written that is ever read.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

from .config import CleanConfig, CleanConfigError
from megactllm.common.atomic import write_json_atomic
from megactllm.common.command import InputNotFoundError

# Sections whose change alters results; run settings (workers, progress) do not.
RESULT_SECTIONS = ("input", "normalize", "lines", "filters", "dedup")


def expand_inputs(patterns: list[str]) -> list[str]:
    if not patterns:
        raise InputNotFoundError("input.paths is empty: set it in the recipe or on the command line, "
                                "e.g. input.paths='[/data/raw/*.jsonl]'")
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise InputNotFoundError(f"input path '{pattern}' matches no file")
        files.extend(m for m in matches if os.path.isfile(m))
    if not files:
        raise InputNotFoundError(f"input paths {patterns} name no files")
    return sorted(dict.fromkeys(os.path.abspath(f) for f in files))


class Workdir:
    def __init__(self, cfg: CleanConfig):
        self.cfg = cfg
        self.root = Path(cfg.run.output_dir)
        self.manifest_path = self.root / "manifest.json"

    def prepare(self) -> list[str]:
        """Shard list, fixed by the first run; later runs must use the same inputs and recipe."""
        recipe = {k: self.cfg.to_dict()[k] for k in RESULT_SECTIONS}
        recipe["dedup"].pop("threads")  # speed only
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
        if self.manifest_path.exists():
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            if manifest["recipe_digest"] != digest:
                raise CleanConfigError(f"{self.root} was made with a different recipe (digest {manifest['recipe_digest']}, "
                                 f"now {digest}); use a new run.output_dir or delete the old one")
            return manifest["shards"]
        shards = expand_inputs(self.cfg.input.paths)
        write_json_atomic(self.manifest_path, {"shards": shards, "recipe_digest": digest, "recipe": recipe}, indent=1)
        return shards

    def shards(self) -> list[str]:
        if not self.manifest_path.exists():
            raise InputNotFoundError(f"{self.manifest_path} is missing: run the filter stage first")
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))["shards"]

    def path(self, stage: str, unit: int, suffix: str) -> Path:
        return self.root / stage / f"{unit:05d}{suffix}"

    def done(self, stage: str, unit: int) -> bool:
        return self.path(stage, unit, ".done").exists()

    def mark_done(self, stage: str, unit: int) -> None:
        write_json_atomic(self.path(stage, unit, ".done"), {"stage": stage, "unit": unit}, indent=1)

    def missing(self, stage: str, units: range | list[int]) -> list[int]:
        return [u for u in units if not self.done(stage, u)]
