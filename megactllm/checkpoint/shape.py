"""The model section of a run that starts from a checkpoint comes from the checkpoint's metadata.

DESIGN's rule is one source of truth for a model's shape. With `checkpoint.load` (once it holds a
checkpoint) or `checkpoint.pretrained`, the checkpoint's ModelConfig (written by every
save, and by the Hugging Face importer) fills the model section; a recipe may leave it out.

- What the weights fix (layers, widths, heads, query groups, vocabulary, norm epsilon, ties,
  biases) may be restated, but a value the user set (in the recipe, an override, or through a
  named `model.arch`) that differs is refused before anything is built, naming both values.
- What a run may choose (sequence length, position limit, RoPE base, dropout, init std) keeps the user's value when set, else the checkpoint's.
- The dtype (optim.bf16 / optim.fp16) follows the checkpoint unless the recipe sets one.
- The tokenizer defaults to the checkpoint's own copy; a given one must fit the embedding's rows
  (rows past its ids are padding) and be that copy or an extension of it, else it is refused by name.
"""
from __future__ import annotations

import dataclasses
import filecmp
from pathlib import Path
from typing import Optional

from megactllm.config import Config, ModelConfig
from megactllm.errors import ModelShapeError

# Fields the saved weights and their numerics fix.
FIXED_FIELDS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "kv_channels",
    "vocab_size",
    "norm_epsilon",
    "tie_word_embeddings",
    "add_bias_linear",
    "family",
    "add_qkv_bias",
    "qk_layernorm",
    "rope_scaling",
    "rope_scaling_factor",
    "sliding_window",
    "make_vocab_size_divisible_by",
    "num_moe_experts",
    "moe_router_topk",
    "moe_ffn_hidden_size",
    "moe_norm_topk_prob",
    "moe_shared_expert_intermediate_size",
    "moe_shared_expert_gate",
    "moe_layer_pattern",
)
# Fields a run may set differently from the checkpoint it starts from.
RUN_FIELDS = (
    "seq_length",
    "max_position_embeddings",
    "rotary_base",
    "hidden_dropout",
    "attention_dropout",
    "init_method_std",
    "moe_aux_loss_coeff",
    "moe_z_loss_coeff",
)


def checkpoint_to_start_from(cfg: Config) -> Optional[str]:
    """The checkpoint the Trainer will read the weights from: checkpoint.load when it holds one, else the pretrained one."""
    from megactllm.checkpoint.checkpointer import Checkpointer
    from megactllm.checkpoint.layout import holds_checkpoints

    c = cfg.checkpoint
    if c.load and holds_checkpoints(c.load):
        # The one resume will use (sizes checked here; checksums too when the run resumes).
        meta = Checkpointer(c.load).latest(checksums=False)
        if meta is not None:
            return str(meta.path)
    return c.pretrained


def _same(field: str, a, b, saved: ModelConfig, user: ModelConfig) -> bool:
    # num_query_groups None and kv_channels None are shorthands: compare what they mean.
    if field == "num_query_groups":
        return saved.num_kv_heads == user.num_kv_heads
    if field == "kv_channels":
        return saved.head_dim == user.head_dim
    if field == "make_vocab_size_divisible_by":  # the checkpoint's rows must already be such a multiple
        return not b or saved.vocab_size % b == 0
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a)))
    return a == b


def _set_by_user(cfg: Config, name: str) -> bool:
    origin = cfg.origin("model", name)
    if name == "vocab_size" and cfg.model.make_vocab_size_divisible_by:
        # The option derives the rows (from the tokenizer) unless the recipe names them: a relaunch
        # of the run that made this checkpoint must not compare an architecture's default with them.
        return (origin or "").startswith(("the recipe", "an override"))
    return bool(origin)


def resolve_model_from_checkpoint(cfg: Config) -> Optional[str]:
    """Fill cfg.model (and the dtype, and the tokenizer when unset) from the checkpoint; returns its path.

    Raises ModelShapeError for a user-set value that contradicts the checkpoint, CheckpointError
    for an unreadable checkpoint, VocabMismatchError for a tokenizer that does not fit it.
    """
    from megactllm.checkpoint.metadata import read_metadata

    path = checkpoint_to_start_from(cfg)
    if not path:
        return None
    meta = read_metadata(path)
    saved, user = meta.model_config, cfg.model
    where = f"checkpoint {meta.path}"
    conflicts = [
        f"model.{name}={getattr(user, name)} (set by {cfg.origin('model', name)}) but the {where} has {getattr(saved, name)}"
        for name in FIXED_FIELDS
        if _set_by_user(cfg, name) and not _same(name, getattr(saved, name), getattr(user, name), saved, user)
    ]
    if conflicts:
        raise ModelShapeError(
            "; ".join(conflicts) + ". The model's shape comes from the checkpoint: drop these model keys "
            "from the recipe/overrides (or start from a checkpoint of that shape)"
        )
    # Run choices the user made explicitly (not through a named arch) win; everything else is the checkpoint's.
    chosen = {
        name: getattr(user, name)
        for name in RUN_FIELDS
        if (cfg.origin("model", name) or "").startswith(("the recipe", "an override"))
    }
    cfg.model = dataclasses.replace(saved, **chosen)
    _dtype_from_checkpoint(cfg, meta)
    _tokenizer_from_checkpoint(cfg, meta)
    return str(meta.path)


def _dtype_from_checkpoint(cfg: Config, meta) -> None:
    if cfg.origin("optim", "bf16") or cfg.origin("optim", "fp16") or not meta.dtype:
        return
    cfg.optim.bf16 = meta.dtype == "bf16"
    cfg.optim.fp16 = meta.dtype == "fp16"


def _tokenizer_from_checkpoint(cfg: Config, meta) -> None:
    """Default the tokenizer to the checkpoint's copy; refuse one that does not fit its vocabulary."""
    from megactllm.tokenizer.vocab_fit import check_tokenizer_fits
    from megactllm.tokenizer import load_tokenizer

    d = cfg.data
    saved_file = meta.tokenizer_file if meta.tokenizer_file and meta.tokenizer_file.is_file() else None
    if not d.tokenizer_model:
        if saved_file is None:
            return
        d.tokenizer_model = str(saved_file)
        d.tokenizer_type = meta.tokenizer.get("type", d.tokenizer_type)
        return
    if not Path(d.tokenizer_model).is_file():
        raise ModelShapeError(f"data.tokenizer_model {d.tokenizer_model} does not exist")
    tokenizer = load_tokenizer(d.tokenizer_type, d.tokenizer_model)
    reference = None  # the checkpoint's own copy, when the given tokenizer is another file
    if saved_file is not None and not filecmp.cmp(saved_file, d.tokenizer_model, shallow=False):
        reference = load_tokenizer(meta.tokenizer.get("type", d.tokenizer_type), str(saved_file))
    check_tokenizer_fits(cfg.model, tokenizer, where=f"the checkpoint {meta.path}", reference=reference)
