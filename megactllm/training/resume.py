"""Where a run starts: resumed from `checkpoint.load` (model, optimizer, scheduler, counters, RNG) or
initialised from `checkpoint.pretrained` (weights only), else from scratch.

A data-parallel change is routine (megatron-core reshards over DP); a TP/PP change loads the
optimizer only with checkpoint.reshard_optimizer; a layout the optimizer cannot follow loads weights,
schedule and counters and says that Adam's moments start from zero.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from megactllm.checkpoint import save_load as ckpt
from megactllm.data.pretrain.blend_schedule import check_resumed_schedule
from megactllm.training.rng import restore_rng_state


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


def resume_or_initialise(trainer) -> None:
    c = trainer.cfg.checkpoint
    if c.load and has_checkpoint(c.load):
        resume(trainer, c.load)
    elif c.pretrained:
        meta = ckpt.load_model_weights(c.pretrained, trainer.model, trainer.cfg.model)
        trainer.log.info(f"initialised weights from {meta.path} (iteration {meta.iteration}); fresh optimizer and schedule")
        reload_master_weights(trainer.optimizer)


def resume(trainer, path: str) -> None:
    cfg = trainer.cfg
    meta = ckpt.read_metadata(path)
    same = ckpt.same_layout(meta, cfg.parallel, trainer.world_size)
    loadable, why_not = ckpt.optimizer_loadable(meta, cfg.parallel)
    # A CP change splits no weight: with optimizer state loadable it loads like a DP change.
    tp_pp_changed = not ckpt.same_weight_split(meta, cfg.parallel)
    load_optimizer = loadable and (not tp_pp_changed or cfg.checkpoint.reshard_optimizer)
    if not load_optimizer:
        if loadable:
            why_not = "the TP/PP layout changed and checkpoint.reshard_optimizer is false"
        trainer.log.warning(
            f"{meta.path} was written at {layout_text(meta.parallel, meta.world_size)}; this run is "
            f"{layout_text(asdict(cfg.parallel), trainer.world_size)}. Model weights, LR schedule and counters are "
            f"loaded, but the optimizer state is NOT: {why_not}. Adam moments start from zero."
        )
    if load_optimizer:
        _, state = ckpt.load_checkpoint(path, trainer.model, trainer.optimizer, trainer.scheduler, cfg.model)
    else:
        _, state = ckpt.load_checkpoint(path, trainer.model, None, trainer.scheduler, cfg.model)
        reload_master_weights(trainer.optimizer)
    state_type = type(trainer.state)
    known = set(state_type.__dataclass_fields__)
    current_schedule = trainer.state.blend_schedule
    check_resumed_schedule(
        state.get("blend_schedule"), current_schedule, cfg.data.allow_blend_schedule_change, str(meta.path), trainer.log.warning
    )
    trainer.state = state_type(**{k: v for k, v in state.items() if k in known})
    trainer.state.blend_schedule = current_schedule
    rng = ckpt.load_rng_state(meta) if same else None
    if rng is not None:
        restore_rng_state(rng)
    else:
        trainer.log.warning(f"RNG state of {meta.path} not restored (other layout or none saved): random streams differ")
    trainer.last_checkpoint = str(meta.path)
    trainer.resumed_from = str(meta.path)
    s = trainer.state
    trainer.log.info(
        f"resumed from {meta.path}: iteration {s.iteration}, {s.consumed_samples} samples, {s.skipped_iterations} skipped"
    )
