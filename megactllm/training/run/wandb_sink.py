"""Weights & Biases as a RunLogger sink (wandb.project; the extra `pip install -e ".[wandb]"`).

Rank 0 opens the run; every scalar TensorBoard gets (loss, LR, grad norm, tokens/s, MFU, memory,
blend phase, validation, in-loop benchmarks, skipped spikes, the straggler report) goes to W&B
against the `iteration` metric, so a resumed run's repeated iterations append. The run id is saved
in every checkpoint (the W&B callback's state) and kept in the run directory (the log dir) as
wandb_run_id.txt: a resumed run continues the same W&B run (id=..., resume="allow"), the
checkpoint's id first. WANDB_MODE=offline writes the run under wandb_dir with no network;
`wandb sync` uploads it later.

wandb-core writes an offline run's .wandb file in the background (every 15 s, or when the run
finishes), so the history is complete on disk only once finish() has returned: the callback
(callbacks/wandb_logging.py) calls it on every way out of the loop.
"""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Optional

from megactllm.common.atomic import write_text_atomic
from megactllm.common.optional import require
from megactllm.output import verbose_requested

RUN_ID_FILE = "wandb_run_id.txt"
PURPOSE = "wandb.project (Weights & Biases logging)"


def wandb_wanted(wandb_cfg) -> bool:
    """Whether the recipe asks for W&B (the recipe refuses the other wandb keys without a project)."""
    return bool(wandb_cfg.project)


def check_wandb(wandb_cfg) -> None:
    """Before anything is built (every rank): W&B asked for and its package importable."""
    if wandb_wanted(wandb_cfg):
        require("wandb", PURPOSE)


def run_id_for(run_dir: Path) -> str:
    """The run's W&B id, created once and kept in run_dir so that a resumed run continues it."""
    path = run_dir / RUN_ID_FILE
    if path.is_file() and path.read_text(encoding="utf-8").strip():
        return path.read_text(encoding="utf-8").strip()
    run_id = secrets.token_hex(6)  # W&B ids: letters and digits, unique within the project
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, run_id + "\n")
    return run_id


class WandbSink:
    """One W&B run: open(), then scalars() from the RunLogger, then finish()."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.wandb = require("wandb", PURPOSE)
        self.run = None
        self.run_id = None

    def open(self, run_dir: Path, run_id: Optional[str] = None) -> str:
        """Start (or continue) the run `run_id` (None: the run directory's); returns a line saying where it goes."""
        w = self.cfg.wandb
        # Silent unless verbose (MEGACTLLM_VERBOSE, --verbose): the returned line says where the run
        # goes. console="off": wandb does not wrap this process's stdout/stderr.
        settings = self.wandb.Settings(silent=not verbose_requested(), console="off", disable_git=True)
        self.run = self.wandb.init(
            project=w.project, entity=w.entity, name=w.name, dir=w.dir or str(run_dir),
            id=run_id or run_id_for(run_dir), resume="allow", config=self.cfg.to_dict(), settings=settings,
        )
        self.run_id = self.run.id
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="iteration")
        if self.run.offline:  # run.dir is the run's files/ folder; `wandb sync` takes the run folder
            where = f"offline in {Path(self.run.dir).parent} (upload: wandb sync DIR)"
        else:
            where = self.run.url
        return f"W&B: run {self.run.id} of project {w.project}: {where}"

    def scalars(self, values: dict, iteration: int) -> None:
        self.run.log({**values, "iteration": iteration})

    def finish(self, exit_code: int) -> None:
        """Blocks until wandb-core has written (offline) or sent everything: the history is complete."""
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=exit_code)
