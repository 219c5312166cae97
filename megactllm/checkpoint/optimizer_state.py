"""The optimizer's part of a checkpoint: its on-disk format, and the megatron-core 0.16 gaps
(without Apex/Transformer Engine) that loading a torch Adam state into the distributed optimizer
meets, worked around here and nowhere else."""
from __future__ import annotations

from typing import Optional

import torch

from megactllm.config import Config


# How the optimizer state is laid out on disk (megatron-core's names, see
# DistributedOptimizer.sharded_state_dict):
#   "model_space"       the plain (non-distributed) optimizer: states keyed like the model's global
#                       tensors, so they reshard over TP, PP and DP like the weights.
#   "dp_reshardable"    distributed optimizer, each rank writes its own flat buffers in parallel
#                       (fast, megatron's default); reshards over DP only.
#   "fully_reshardable" distributed optimizer gathered per parameter on DP rank 0 at save time
#                       (slower, memory on rank 0); reshards over TP, PP and DP.
OPTIMIZER_FORMATS = ("model_space", "dp_reshardable", "fully_reshardable")


def optimizer_checkpoint_format(cfg: Config) -> str:
    if not cfg.parallel.use_distributed_optimizer:
        return "model_space"
    return cfg.checkpoint.optimizer_format  # dp_reshardable or fully_reshardable (the recipe's choice)


def sharded_metadata(fmt: Optional[str]) -> Optional[dict]:
    if fmt in (None, "model_space"):
        return None
    return {"distrib_optim_sharding_type": fmt}



def materialize_adam_state(optimizer) -> None:
    """Give a fresh (never stepped) optimizer zero Adam moments and step 0.

    megatron-core builds the loading state dict from the optimizer's current state, and without
    Apex/TE its distributed optimizer reads a 'step' that torch's Adam creates only on its first
    step. The loaded values replace these placeholders.
    """
    for leaf in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(leaf, "optimizer", None)
        if inner is None or not isinstance(inner, torch.optim.Adam):
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                state = inner.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p.data)
                    state["exp_avg_sq"] = torch.zeros_like(p.data)
                state.setdefault("step", torch.tensor(0.0))


def load_optimizer_state(optimizer, state_dict) -> None:
    """optimizer.load_state_dict, around a megatron-core 0.16 gap for fully_reshardable states.

    Without Apex/TE, DistributedOptimizer.load_state_dict first gives every torch Adam state a
    'step' and then copies the fully_reshardable per-parameter states key by key over
    {param, **state}: the saved states carry no 'step' (kept in the param groups), so the copy
    fails on it. We load the common part, then the parameter states with 'step' set aside.
    """
    leaves = list(getattr(optimizer, "chained_optimizers", [optimizer]))
    # no_grad: with fp32 params the distributed optimizer's main params are views of the model's
    # leaf parameters, and its dp_reshardable loader copies into them outside no_grad.
    with torch.no_grad():
        _load_leaf_states(leaves, state_dict)
        _unshare_adam_steps(leaves)


def _unshare_adam_steps(leaves) -> None:
    """Give every Adam state its own, correct 'step' after a load (megatron-core 0.16 without Apex/TE).

    The distributed optimizer keeps the step in its param groups and hands one shared tensor to
    every parameter's state (torch's Adam increments it in place per parameter, so it would advance
    by the number of parameters each iteration); its dp_reshardable loader may also copy back the
    placeholder step of the state it loaded into. The param group's step is the saved value.
    """
    for leaf in leaves:
        inner = getattr(leaf, "optimizer", None)
        if inner is None:
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                state = inner.state.get(p)
                if not state or not isinstance(state.get("step"), torch.Tensor):
                    continue
                if "step" in group:
                    state["step"] = torch.tensor(float(group["step"]), dtype=state["step"].dtype)
                else:
                    state["step"] = state["step"].clone()


def _load_leaf_states(leaves, state_dict) -> None:
    leaf_states = [state_dict] if len(leaves) == 1 else [state_dict[i] for i in range(len(leaves))]
    for leaf, leaf_state in zip(leaves, leaf_states):
        if not (isinstance(leaf_state, dict) and leaf_state.get("param_state_sharding_type") == "fully_reshardable"):
            leaf.load_state_dict(leaf_state)
            continue
        common = {k: v for k, v in leaf_state.items() if k not in ("param_state", "param_state_sharding_type")}
        leaf.load_state_dict(common)
        inner_states = leaf.optimizer.state
        steps = {p: st.pop("step") for p, st in inner_states.items() if "step" in st}
        try:
            leaf.load_parameter_state_from_fully_reshardable(leaf_state["param_state"])
        finally:
            for p, step in steps.items():
                inner_states[p]["step"] = step
