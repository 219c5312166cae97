"""Runs a chain of stages, each into its own directory, skipping those already finished.

A stage is finished when `<out>/<stage>/DONE.json` exists: it is written atomically, only after
the stage succeeded, and holds the stage's time, key figure and output path, so a rerun can print
the closing table without redoing the work. A stage without its marker is redone from an empty
directory (whatever a failed attempt left is removed first), and every stage after a redone one
is redone too: its input changed. A marker written with other settings (the run's common ones and
the stage's own) counts as absent.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

DONE_FILE = "DONE.json"


@dataclass
class StageResult:
    """What a stage reports: one key figure (a short phrase with numbers) and its main output."""

    figure: str
    output: str
    details: dict[str, Any] = field(default_factory=dict)  # numbers the test and README read


@dataclass
class Stage:
    name: str
    description: str
    run: Callable[[Path], StageResult]  # gets its own empty directory
    settings: dict[str, Any] = field(default_factory=dict)  # what its output depends on besides its input


@dataclass
class StageRecord:
    name: str
    seconds: float
    figure: str
    output: str
    skipped: bool
    details: dict[str, Any]


class StageFailed(RuntimeError):
    pass


def read_marker(stage_dir: Path, settings: dict) -> Optional[dict]:
    try:
        marker = json.loads((stage_dir / DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if marker.get("settings") == settings else None


def write_marker(stage_dir: Path, payload: dict) -> None:
    tmp = stage_dir / (DONE_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, stage_dir / DONE_FILE)


def run_stages(stages: Sequence[Stage], out_dir: Path, settings: dict, say: Callable[[str], None] = print,
               force: Sequence[str] = ()) -> list[StageRecord]:
    """Runs (or skips) every stage in order; returns one record per stage. Raises StageFailed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[StageRecord] = []
    redo_rest = False
    width = max(len(s.name) for s in stages)
    for number, stage in enumerate(stages, 1):
        stage_dir = out_dir / stage.name
        own = json.loads(json.dumps({**settings, **stage.settings}))  # as the marker stores it (tuples -> lists)
        marker = None if (redo_rest or stage.name in force) else read_marker(stage_dir, own)
        tag = f"[{number}/{len(stages)}] {stage.name:<{width}}"
        if marker is not None:
            record = StageRecord(stage.name, marker["seconds"], marker["figure"], marker["output"], True,
                                 marker.get("details", {}))
            say(f"{tag}  done before ({marker['seconds']:.0f} s): {marker['figure']}  -> {marker['output']}")
            records.append(record)
            continue
        redo_rest = True
        if stage_dir.exists():
            shutil.rmtree(stage_dir)
        stage_dir.mkdir(parents=True)
        say(f"{tag}  {stage.description} ...")
        start = time.monotonic()
        try:
            result = stage.run(stage_dir)
        except StageFailed as exc:
            raise StageFailed(f"stage {stage.name} failed: {exc}") from exc
        except Exception as exc:  # a stage's own error, with the stage named
            raise StageFailed(f"stage {stage.name} failed: {type(exc).__name__}: {exc}") from exc
        seconds = time.monotonic() - start
        record = StageRecord(stage.name, seconds, result.figure, result.output, False, result.details)
        write_marker(stage_dir, {"settings": own, **asdict(record)})
        say(f"{tag}  {seconds:.0f} s: {result.figure}  -> {result.output}")
        records.append(record)
    return records


def format_table(records: Sequence[StageRecord]) -> str:
    """The closing table: stage, time, key figure, output path (markdown, readable as plain text)."""
    rows = [["stage", "time", "key figure", "output"]]
    for r in records:
        rows.append([r.name, f"{r.seconds:.0f} s" + (" (earlier)" if r.skipped else ""), r.figure, r.output])
    total = sum(r.seconds for r in records)
    rows.append(["total", f"{total / 60:.1f} min", "", ""])
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
