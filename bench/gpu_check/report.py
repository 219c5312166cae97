"""Rows of the GPU check: one per stage, written as JSON and as a Markdown table after every stage."""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable


class Skip(Exception):
    """A stage that cannot run here; the message says why (e.g. "needs a GPU")."""


@dataclass
class Row:
    stage: str
    status: str  # ok, failed, skipped
    seconds: float
    figures: dict = field(default_factory=dict)
    note: str = ""  # the error for failed, the reason for skipped, what was compared for ok


def run_stage(name: str, body: Callable[[], tuple[dict, str]]) -> Row:
    """Run one stage; its failure becomes the row's error and never stops the next stage."""
    start = time.perf_counter()
    try:
        figures, note = body()
        status = "ok"
    except Skip as why:
        figures, note, status = {}, str(why), "skipped"
    except BaseException as e:  # noqa: BLE001 - a stage's crash is a measurement, not the end
        if isinstance(e, KeyboardInterrupt):
            raise
        last = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
        where = f" ({Path(last[0].filename).name}:{last[0].lineno})" if last else ""
        figures, note, status = {}, f"{type(e).__name__}: {e}{where}"[:800], "failed"
    return Row(name, status, round(time.perf_counter() - start, 2), figures, note)


def figure_text(figures: dict) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    return "; ".join(f"{k} {fmt(v)}" for k, v in figures.items())


def markdown(rows: list[Row], header: str) -> str:
    lines = [header, "", "| stage | status | seconds | figures | note |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [r.stage, r.status, f"{r.seconds:.1f}", figure_text(r.figures), r.note]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write(out: Path, rows: list[Row], environment: dict, header: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment, "rows": [asdict(r) for r in rows]}
    (out / "gpu_check.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    (out / "gpu_check.md").write_text(markdown(rows, header))
