"""How the layout a checkpoint was saved at compares with this run's, in one place."""
from __future__ import annotations

from dataclasses import asdict, dataclass

# What splits the weights (the experts' split included); context parallelism splits the sequence, no weight.
WEIGHT_SPLIT = (
    "tensor_model_parallel_size", "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size",
    "expert_model_parallel_size", "expert_tensor_parallel_size",
)
MODEL_PARALLEL = WEIGHT_SPLIT + ("context_parallel_size",)
COMPARED = MODEL_PARALLEL + ("use_distributed_optimizer",)


@dataclass(frozen=True)
class LayoutChange:
    """The layout keys that differ between the save and this run ("world_size" included)."""

    keys: frozenset

    @property
    def weights_resplit(self) -> bool:
        return bool(self.keys & set(WEIGHT_SPLIT))

    @property
    def model_parallel_changed(self) -> bool:
        return bool(self.keys & set(MODEL_PARALLEL))

    @property
    def none(self) -> bool:
        return not self.keys


def compare_layout(meta, parallel, world_size=None) -> LayoutChange:
    current = asdict(parallel)
    keys = {k for k in COMPARED if meta.parallel.get(k) != current[k]}
    if world_size is not None and meta.world_size != world_size:
        keys.add("world_size")
    return LayoutChange(frozenset(keys))


def layout_text(parallel: dict, world_size) -> str:
    return (
        f"TP={parallel.get('tensor_model_parallel_size')} PP={parallel.get('pipeline_model_parallel_size')} "
        f"VPP={parallel.get('virtual_pipeline_model_parallel_size') or 1} world={world_size} "
        f"distributed_optimizer={parallel.get('use_distributed_optimizer')}"
    )


def optimizer_loadable(meta, parallel) -> tuple[bool, str]:
    """Whether megatron-core can load this checkpoint's optimizer state at the current layout, and why not."""
    if not meta.has_optimizer:
        return False, "the checkpoint holds no optimizer state"
    if bool(meta.parallel.get("use_distributed_optimizer")) != parallel.use_distributed_optimizer:
        return False, "the distributed optimizer was switched on or off since the save"
    saved_ep = int(meta.parallel.get("expert_model_parallel_size") or 1)
    if (saved_ep > 1) != (parallel.expert_model_parallel_size > 1):
        # At EP > 1 megatron-core chains a second optimizer for the experts: another state layout.
        return False, (f"expert parallelism went from EP={saved_ep} to EP={parallel.expert_model_parallel_size} "
                       "(megatron-core keeps the experts' optimizer apart only at EP > 1)")
    fmt = meta.optimizer_format
    if not compare_layout(meta, parallel).model_parallel_changed or fmt in ("model_space", "fully_reshardable"):
        return True, ""
    return False, (
        f"its optimizer state was saved as {fmt}, which megatron-core reshards over data-parallel ranks only "
        "(save with checkpoint.optimizer_format=fully_reshardable to change TP/PP with the optimizer state)"
    )
