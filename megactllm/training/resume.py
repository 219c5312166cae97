"""Where a run starts: resumed from `checkpoint.load` (model, optimizer, scheduler, counters, RNG) or
initialised from `checkpoint.pretrained` (weights only), else from scratch.

A data-parallel change is routine (megatron-core reshards over DP); a TP/PP change loads the
optimizer only with checkpoint.reshard_optimizer; a layout the optimizer cannot follow loads weights,
schedule and counters and says that Adam's moments start from zero.

Nothing here touches the trainer: `start` and `resume` load into the model, optimizer and
scheduler they are given and return what the loop adopts (a `Resumed`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from megactllm.checkpoint import save_load as ckpt
from megactllm.data.pretrain.blend_schedule import check_resumed_schedule
from megactllm.training.rng import restore_rng_state


@dataclass
class Resumed:
    """What a run starts from: None counters mean fresh ones."""

    train_state: Optional[dict] = None  # the loop's counters as saved (TrainState's fields and more)
    callbacks: dict = field(default_factory=dict)  # callback name -> its saved state
    checkpoint: Optional[str] = None  # the iteration directory resumed from


def has_checkpoint(path: str) -> bool:
    p = Path(path)
    return (p / ckpt.LATEST_FILE).is_file() or (p / ckpt.METADATA_FILE).is_file()


def layout_text(parallel: dict, world_size) -> str:
    return (
        f"TP={parallel.get('tensor_model_parallel_size')} PP={parallel.get('pipeline_model_parallel_size')} "
        f"VPP={parallel.get('virtual_pipeline_model_parallel_size') or 1} world={world_size} "
        f"distributed_optimizer={parallel.get('use_distributed_optimizer')}"
    )


def reload_master_weights(optimizer) -> None:
    """Float16Module keeps no separate copy, but the optimizer's fp32 master weights must follow."""
    reload = getattr(optimizer, "reload_model_params", None)  # megatron's mixed-precision optimizers only
    if reload is not None:
        reload()


def start(cfg, model, optimizer, scheduler, world_size: int, blend_schedule, log) -> Resumed:
    """Collective: load what the run starts from into model/optimizer/scheduler."""
    c = cfg.checkpoint
    if c.load and has_checkpoint(c.load):
        return resume(cfg, model, optimizer, scheduler, world_size, blend_schedule, log, c.load)
    if c.pretrained:
        meta = ckpt.load_model_weights(c.pretrained, model, cfg.model)
        log.info(f"initialised weights from {meta.path} (iteration {meta.iteration}); fresh optimizer and schedule")
        reload_master_weights(optimizer)
    return Resumed()


def resume(cfg, model, optimizer, scheduler, world_size: int, blend_schedule, log, path: str) -> Resumed:
    """Collective: load the checkpoint at `path` for this run's layout."""
    meta = ckpt.read_metadata(path)
    same = ckpt.same_layout(meta, cfg.parallel, world_size)
    loadable, why_not = ckpt.optimizer_loadable(meta, cfg.parallel)
    # A CP change splits no weight: with optimizer state loadable it loads like a DP change.
    tp_pp_changed = not ckpt.same_weight_split(meta, cfg.parallel)
    load_optimizer = loadable and (not tp_pp_changed or cfg.checkpoint.reshard_optimizer)
    if not load_optimizer:
        if loadable:
            why_not = "the TP/PP layout changed and checkpoint.reshard_optimizer is false"
        log.warning(
            f"{meta.path} was written at {layout_text(meta.parallel, meta.world_size)}; this run is "
            f"{layout_text(asdict(cfg.parallel), world_size)}. Model weights, LR schedule and counters are "
            f"loaded, but the optimizer state is NOT: {why_not}. Adam moments start from zero."
        )
    _, state = ckpt.load_checkpoint(path, model, optimizer if load_optimizer else None, scheduler, cfg.model)
    if not load_optimizer:
        reload_master_weights(optimizer)
    check_resumed_schedule(
        state.get("blend_schedule"), blend_schedule, cfg.data.allow_blend_schedule_change, str(meta.path), log.warning
    )
    rng = ckpt.load_rng_state(meta) if same else None
    if rng is not None:
        restore_rng_state(rng)
    else:
        log.warning(f"RNG state of {meta.path} not restored (other layout or none saved): random streams differ")
    return Resumed(state, dict(meta.callbacks), str(meta.path))
