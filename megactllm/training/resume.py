"""Where a run starts: resumed from `checkpoint.load` (model, optimizer, scheduler, counters, RNG) or
initialised from `checkpoint.pretrained` (weights only), else from scratch.

`checkpoint.load` names a run directory: its newest checkpoint whose files check out against their
manifest is used (a damaged one is named, and the one before it tried). A data-parallel change
is routine (megatron-core reshards over DP); a TP/PP change loads the optimizer only with
checkpoint.reshard_optimizer; a layout the optimizer cannot follow loads weights, schedule and
counters and says that Adam's moments start from zero.

Nothing here touches the trainer: `start` and `resume` load into the model, optimizer and
scheduler they are given and return what the loop adopts (a `Resumed`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from megactllm.checkpoint import Checkpointer, holds_checkpoints, read_metadata
from megactllm.checkpoint.parallel_layout import compare_layout, layout_text, optimizer_loadable
from megactllm.data.pretrain.blend_schedule import check_resumed_schedule
from megactllm.training.rng import restore_rng_state


@dataclass
class Resumed:
    """What a run starts from: None counters mean fresh ones."""

    train_state: Optional[dict] = None  # the loop's counters as saved (TrainState's fields and more)
    callbacks: dict = field(default_factory=dict)  # callback name -> its saved state
    checkpoint: Optional[str] = None  # the iteration directory resumed from


def reload_master_weights(optimizer) -> None:
    """Float16Module keeps no separate copy, but the optimizer's fp32 master weights must follow."""
    reload = getattr(optimizer, "reload_model_params", None)  # megatron's mixed-precision optimizers only
    if reload is not None:
        reload()


def start(cfg, model, optimizer, scheduler, world_size: int, blend_schedule, log) -> Resumed:
    """Collective: load what the run starts from into model/optimizer/scheduler."""
    c = cfg.checkpoint
    if c.load and holds_checkpoints(c.load):
        meta = Checkpointer(c.load).latest(checksums=True, warn=log.warning)
        if meta is not None:
            return resume(cfg, model, optimizer, scheduler, world_size, blend_schedule, log, str(meta.path))
    if c.pretrained:
        meta = Checkpointer.load_weights(c.pretrained, model, cfg.model)
        log.info(f"initialised weights from {meta.path} (iteration {meta.iteration}); fresh optimizer and schedule")
        reload_master_weights(optimizer)
    return Resumed()


def resume(cfg, model, optimizer, scheduler, world_size: int, blend_schedule, log, path: str) -> Resumed:
    """Collective: load the checkpoint at `path` (an iteration directory) for this run's layout."""
    meta = read_metadata(path)
    change = compare_layout(meta, cfg.parallel, world_size)
    loadable, why_not = optimizer_loadable(meta, cfg.parallel)
    # A CP change splits no weight: with optimizer state loadable it loads like a DP change.
    load_optimizer = loadable and (not change.weights_resplit or cfg.checkpoint.reshard_optimizer)
    if not load_optimizer:
        if loadable:
            why_not = "the TP/PP layout changed and checkpoint.reshard_optimizer is false"
        log.warning(
            f"{meta.path} was written at {layout_text(meta.parallel, meta.world_size)}; this run is "
            f"{layout_text(asdict(cfg.parallel), world_size)}. Model weights, LR schedule and counters are "
            f"loaded, but the optimizer state is NOT: {why_not}. Adam moments start from zero."
        )
    loaded = Checkpointer.load(meta.path, model, optimizer if load_optimizer else None, scheduler, cfg.model)
    if not load_optimizer:
        reload_master_weights(optimizer)
    check_resumed_schedule(
        loaded.train_state.get("blend_schedule"), blend_schedule, cfg.data.allow_blend_schedule_change,
        str(meta.path), log.warning,
    )
    rng = Checkpointer.load_rng(meta) if change.none else None
    if rng is not None:
        restore_rng_state(rng)
    else:
        log.warning(f"RNG state of {meta.path} not restored (other layout or none saved): random streams differ")
    return Resumed(loaded.train_state, loaded.callbacks, str(meta.path))
