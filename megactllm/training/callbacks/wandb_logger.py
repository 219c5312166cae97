"""Weights & Biases (train.wandb_project; the optional extra `pip install "megactllm[wandb]"`).

Rank 0 logs every scalar TensorBoard gets (loss, LR, grad norm, tokens/s, MFU, memory, blend
phase, validation, in-loop benchmarks, skipped spikes, the straggler report) against the
`iteration` metric, so a resumed run's repeated iterations append instead of being dropped.
The run id is kept in the run directory (train.log_dir) as wandb_run_id.txt: a resumed run
continues the same W&B run. WANDB_MODE=offline writes it under wandb_dir with no network
(`wandb sync` uploads it later).
"""
from __future__ import annotations

import uuid
from pathlib import Path

from megactllm.errors import UserError
from megactllm.training.callbacks.base import Callback

RUN_ID_FILE = "wandb_run_id.txt"


class WandbMissingError(UserError, ImportError):
    pass


def run_id_for(run_dir: Path) -> str:
    """The run's W&B id, created once and kept in run_dir."""
    path = run_dir / RUN_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]  # wandb 0.31 has no wandb.util.generate_id
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(run_id + "\n")
    tmp.replace(path)
    return run_id


class WandbLogger(Callback):
    def __init__(self, cfg, run_dir: str, rank: int):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.run = None
        if rank == 0:
            try:
                import wandb  # noqa: F401
            except ImportError as e:
                raise WandbMissingError(
                    f"train.wandb_project={cfg.train.wandb_project!r} needs wandb: pip install \"megactllm[wandb]\""
                ) from e

    def on_train_start(self, trainer) -> None:
        if self.rank != 0:
            return
        import wandb

        t = self.cfg.train
        self.run = wandb.init(
            project=t.wandb_project, entity=t.wandb_entity, dir=t.wandb_dir or str(self.run_dir), name=t.wandb_name,
            id=run_id_for(self.run_dir), resume="allow", config=self.cfg.to_dict(),
        )
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="iteration")
        trainer.log.add_sink(self)

    def scalars(self, values: dict, iteration: int) -> None:
        self.run.log({**values, "iteration": iteration})

    def on_close(self, trainer) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
