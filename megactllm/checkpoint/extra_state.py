"""Load model weights whichever layer spec (local or Transformer Engine) wrote or reads them.

Both specs save the same tensor keys (megatron's local spec maps its separate norms onto TE's
`linear_qkv.layer_norm_weight` / `linear_fc1.layer_norm_weight`). They differ in `_extra_state`
objects: TE modules keep FP8 scaling metadata there, TE's core attention has one the local spec
lacks, and a checkpoint from the HF importer or another tool may carry none. Extra state holds no
weights, so an entry the checkpoint lacks keeps the module's own (fresh) value; a missing weight
is still an error, naming the checkpoint and the keys.
"""
from __future__ import annotations

from pathlib import Path

from megactllm.errors import UserError

EXTRA_STATE_SUFFIX = "_extra_state"


class MissingWeightsError(UserError, RuntimeError):
    pass


def load_model_state(request: dict, model_dir: Path) -> tuple[dict, set]:
    """dist_checkpointing.load of `request`; returns (loaded, extra-state keys the checkpoint lacks)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    loaded, _, unexpected = dist_checkpointing.load(request, str(model_dir), strict=StrictHandling.RETURN_UNEXPECTED)
    absent = {key for key in unexpected}
    weights = sorted(key for key in absent if not key.endswith(EXTRA_STATE_SUFFIX))
    if weights:
        shown = ", ".join(weights[:5]) + (f" and {len(weights) - 5} more" if len(weights) > 5 else "")
        raise MissingWeightsError(f"{model_dir} lacks {len(weights)} tensor(s) the model needs: {shown}")
    return loaded, absent


def keep_own_extra_state(module, loaded: dict) -> dict:
    """`loaded` plus the module's own extra state for every entry the checkpoint did not provide."""
    own = {k: v for k, v in module.state_dict(keep_vars=True).items() if k.endswith(EXTRA_STATE_SUFFIX)}
    return {**{k: v for k, v in own.items() if k not in loaded}, **loaded}
