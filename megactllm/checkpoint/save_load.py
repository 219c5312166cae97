"""megactllm checkpoints: megatron-core dist_checkpointing plus metadata we check on load.

Layout of a run's checkpoint directory:

    <dir>/latest_checkpointed_iteration.txt    the newest complete iteration (replaced atomically)
    <dir>/iter_0000100/megactllm.json           format version, ModelConfig, tokenizer, layout, counters
    <dir>/iter_0000100/model/                   dist_checkpointing of the model (layout-free)
    <dir>/iter_0000100/optimizer/               dist_checkpointing of the optimizer (when saved)
    <dir>/iter_0000100/tokenizer/               a copy of the tokenizer model file

An iteration is written under `iter_XXXXXXX.partial` and renamed once every rank has finished,
then the pointer is replaced: a crash mid-save leaves the previous checkpoint as the latest and
never a complete-looking directory. The model is saved as global (unsharded) tensors, so a
checkpoint written at one TP/PP layout loads at any other.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from megactllm.common.atomic import write_text_atomic
from megactllm.config import Config, ModelConfig, model_config_from_dict
from megactllm.errors import UserError

FORMAT_VERSION = 1
METADATA_FILE = "megactllm.json"
LATEST_FILE = "latest_checkpointed_iteration.txt"
RNG_DIR = "rng"
# Fields of ModelConfig that fix the shapes of the weights; the rest (sequence length, dropout,
# init) may change between runs that share a checkpoint.
SHAPE_FIELDS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_kv_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "add_bias_linear",
    "family",
    "add_qkv_bias",
    "qk_layernorm",
    "num_moe_experts",
    "moe_ffn_hidden_size",
    "moe_shared_expert_intermediate_size",
    "moe_layer_pattern",
)


class CheckpointError(UserError, RuntimeError):
    pass


@dataclass
class CheckpointMetadata:
    path: Path
    format_version: int
    iteration: int
    model_config: ModelConfig
    tokenizer: dict = field(default_factory=dict)
    parallel: dict = field(default_factory=dict)
    train_state: dict = field(default_factory=dict)
    callbacks: dict = field(default_factory=dict)  # callback name -> its saved state
    has_optimizer: bool = False
    stage: str = "pretrain"
    world_size: Optional[int] = None
    optimizer_format: Optional[str] = None
    dtype: Optional[str] = None  # "bf16", "fp16" or "fp32": the precision the weights were trained in

    @property
    def tokenizer_file(self) -> Optional[Path]:
        name = self.tokenizer.get("file")
        return self.path / "tokenizer" / name if name else None


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def iteration_dir(save_dir: str | os.PathLike, iteration: int) -> Path:
    return Path(save_dir) / f"iter_{iteration:07d}"


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """An iteration directory, given either it or a run directory with a latest pointer."""
    path = Path(path)
    if (path / METADATA_FILE).is_file():
        return path
    latest = path / LATEST_FILE
    if latest.is_file():
        text = latest.read_text().strip()
        try:
            iteration = int(text)
        except ValueError:
            raise CheckpointError(f"{latest} should hold an iteration number, found {text!r}") from None
        resolved = iteration_dir(path, iteration)
        if not (resolved / METADATA_FILE).is_file():
            raise CheckpointError(f"{latest} points at iteration {iteration} but {resolved / METADATA_FILE} is missing")
        return resolved
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raise CheckpointError(
        f"{path} is not a megactllm checkpoint: it has neither {METADATA_FILE} nor {LATEST_FILE}"
    )


def find_latest_iteration(save_dir: str | os.PathLike) -> Optional[int]:
    """The iteration the latest pointer names, or None when the directory holds no checkpoint yet."""
    latest = Path(save_dir) / LATEST_FILE
    if not latest.is_file():
        return None
    return int(latest.read_text().strip())


def _model_fields(saved: dict) -> dict:
    """The saved ModelConfig; an earlier megactllm wrote make_vocab_size_divisible_by=128 as the
    layout's padding (now LAYOUT_VOCAB_MULTIPLE): a value that does not divide the rows is that, not
    the option (which always yields a multiple), and reads as unset."""
    fields = dict(saved)
    multiple = fields.get("make_vocab_size_divisible_by")
    if multiple and int(fields.get("vocab_size", 0)) % int(multiple):
        fields["make_vocab_size_divisible_by"] = None
    return fields


def read_metadata(path: str | os.PathLike) -> CheckpointMetadata:
    ckpt = resolve_checkpoint_dir(path)
    meta_path = ckpt / METADATA_FILE
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path} is not valid JSON: {e}") from None
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format version {version} is not supported (this megactllm reads {FORMAT_VERSION})")
    return CheckpointMetadata(
        path=ckpt,
        format_version=version,
        iteration=int(raw["iteration"]),
        model_config=model_config_from_dict(_model_fields(raw["model"]), str(meta_path)),
        tokenizer=raw.get("tokenizer", {}),
        parallel=raw.get("parallel", {}),
        train_state=raw.get("train_state", {}),
        callbacks=raw.get("callbacks", {}),
        has_optimizer=bool(raw.get("has_optimizer", False)),
        stage=raw.get("stage", "pretrain"),
        world_size=raw.get("world_size"),
        optimizer_format=raw.get("optimizer_format"),
        dtype=raw.get("dtype"),
    )


def check_model_matches(saved: ModelConfig, current: ModelConfig, where: str) -> None:
    """Refuse to load weights into a model of another shape, naming every field that differs."""
    diffs = [
        f"{name}: checkpoint {getattr(saved, name)} vs model {getattr(current, name)}"
        for name in SHAPE_FIELDS
        if getattr(saved, name) != getattr(current, name)
    ]
    if diffs:
        raise CheckpointError(f"{where} was saved for a model of another shape: " + "; ".join(diffs))


def model_sharded_state_dict(model_chunks: list) -> dict:
    """One key per virtual-pipeline chunk; the tensors inside carry global, layout-free names."""
    return {f"chunk{i}": _unwrap(chunk).sharded_state_dict() for i, chunk in enumerate(model_chunks)}


def _unwrap(module):
    """The GPTModel inside megatron's DDP and Float16Module wrappers (both keep it in `.module`)."""
    from megatron.core.models.gpt import GPTModel

    while not isinstance(module, GPTModel) and hasattr(module, "module"):
        module = module.module
    return module


def _write_json_atomic(path: Path, payload: Any) -> None:
    # durable (fsync) before the rename and the latest pointer that follow
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True))


def save_checkpoint(
    save_dir: str | os.PathLike,
    iteration: int,
    model_chunks: list,
    cfg: Config,
    optimizer=None,
    scheduler=None,
    train_state: Optional[dict] = None,
    tokenizer_path: Optional[str] = None,
    rng_state: Optional[dict] = None,
    async_queue=None,
    callbacks: Optional[dict] = None,
) -> Path:
    """Collectively save model (and optimizer/scheduler when given); returns the iteration dir.

    `rng_state` (each rank's own, see megactllm.training.rng) is written per rank under rng/.
    With `async_queue` (megatron-core's AsyncCallsQueue) the tensors are written by a background
    process while training goes on, and the iteration is published (metadata, rename, latest
    pointer) when the queue finalizes the request, after every rank's write: until then the
    previous checkpoint stays the latest. See megactllm.checkpoint.async_save.
    """
    from megatron.core import dist_checkpointing

    from megactllm.checkpoint import async_save as async_checkpoint

    save_dir = Path(save_dir)
    final = iteration_dir(save_dir, iteration)
    partial = final.with_name(final.name + ".partial")
    if _rank() == 0:
        save_dir.mkdir(parents=True, exist_ok=True)
        if partial.exists():  # left by a crash: never trusted, never loaded
            shutil.rmtree(partial)
        (partial / "model").mkdir(parents=True)
        if optimizer is not None:
            (partial / "optimizer").mkdir()
        if rng_state is not None:
            (partial / RNG_DIR).mkdir()
    _barrier()
    if rng_state is not None:
        torch.save(rng_state, partial / RNG_DIR / f"rank_{_rank():05d}.pt")

    use_async = async_queue is not None
    parts = ["model"]
    requests = [dist_checkpointing.save(model_sharded_state_dict(model_chunks), str(partial / "model"), async_sharded_save=use_async)]
    optimizer_format = None
    if optimizer is not None:
        optimizer_format = optimizer_checkpoint_format(cfg)
        optim_sd = optimizer.sharded_state_dict(
            model_sharded_state_dict(model_chunks), metadata=_optimizer_metadata(optimizer_format)
        )
        parts.append("optimizer")
        requests.append(
            dist_checkpointing.save({"optimizer": optim_sd}, str(partial / "optimizer"), async_sharded_save=use_async)
        )

    # Everything the metadata records is captured now: an async save's training moves on.
    tokenizer_info: dict = {"type": cfg.data.tokenizer_type}
    if tokenizer_path:
        tokenizer_info["file"] = Path(tokenizer_path).name
    state = dict(train_state or {})
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    metadata = {
        "format_version": FORMAT_VERSION,
        "iteration": iteration,
        "stage": cfg.train.stage,
        "model": asdict(cfg.model),
        "tokenizer": tokenizer_info,
        "parallel": asdict(cfg.parallel),
        "dtype": "bf16" if cfg.optim.bf16 else "fp16" if cfg.optim.fp16 else "fp32",
        "has_optimizer": optimizer is not None,
        "optimizer_format": optimizer_format,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "train_state": state,
        "callbacks": dict(callbacks or {}),  # each training callback's own state, by its name
    }

    def publish() -> None:
        """After every rank's tensors are on disk: metadata, rename, then the latest pointer."""
        _barrier()
        # Checked on rank 0, refused on every rank (no rank left waiting at a barrier).
        problem = [None]
        if _rank() == 0:
            try:
                for part in parts:
                    async_checkpoint.check_storage_index(partial / part)
            except async_checkpoint.StorageIndexError as e:
                problem = [str(e)]
        if dist.is_initialized():
            dist.broadcast_object_list(problem, src=0)
        if problem[0]:
            raise CheckpointError(f"iteration {iteration} not published, {partial} stays unloadable: {problem[0]}")
        if _rank() == 0:
            if tokenizer_path:
                _copy_tokenizer(Path(tokenizer_path), partial / "tokenizer")
            _write_json_atomic(partial / METADATA_FILE, metadata)
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
            write_text_atomic(save_dir / LATEST_FILE, str(iteration))
        _barrier()

    if use_async:
        async_queue.schedule_async_request(async_checkpoint.combine_requests(requests, publish, label=final.name))
    else:
        publish()
    return final


# Beside a tokenizer.json, the files that name its eos/bos/pad tokens (a Qwen2.5-Instruct's eos is
# <|im_end|>, which tokenizer.json alone does not say): without them the copy would resolve other ids.
# transformers 5 saves the chat template as chat_template.jinja: the model's own format comes along.
# Beside a tokenizer.model, tokenizer_config.json says whether the original adds BOS (tokenizer/bos.py).
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _copy_tokenizer(tokenizer_path: Path, out_dir: Path) -> None:
    out_dir.mkdir(exist_ok=True)
    shutil.copy2(tokenizer_path, out_dir / tokenizer_path.name)
    if tokenizer_path.suffix in (".json", ".model"):
        for name in TOKENIZER_SIDE_FILES:
            side = tokenizer_path.with_name(name)
            if side.is_file() and side != tokenizer_path:
                shutil.copy2(side, out_dir / name)


def _materialize_adam_state(optimizer) -> None:
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


def _load_optimizer_state(optimizer, state_dict) -> None:
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


def load_model_weights(path: str | os.PathLike, model_chunks: list, model_config: Optional[ModelConfig] = None) -> CheckpointMetadata:
    """Load only the model weights (any saved layout into the current one); returns the metadata."""
    from megactllm.checkpoint import extra_state

    meta = read_metadata(path)
    if model_config is not None:
        check_model_matches(meta.model_config, model_config, str(meta.path))
    model_dir = meta.path / "model"
    if not model_dir.is_dir():
        raise CheckpointError(f"{meta.path} has no model/ directory")
    # Either layer spec reads either spec's checkpoint: extra state the checkpoint lacks stays the module's.
    try:
        loaded, _ = extra_state.load_model_state(model_sharded_state_dict(model_chunks), model_dir)
    except extra_state.MissingWeightsError as e:
        raise CheckpointError(str(e)) from None
    for i, chunk in enumerate(model_chunks):
        module = _unwrap(chunk)
        module.load_state_dict(extra_state.keep_own_extra_state(module, loaded[f"chunk{i}"]), strict=True)
    return meta


def load_checkpoint(path: str | os.PathLike, model_chunks: list, optimizer=None, scheduler=None, model_config=None):
    """Model, and optimizer/scheduler state when given; returns (metadata, train_state)."""
    from megatron.core import dist_checkpointing

    meta = load_model_weights(path, model_chunks, model_config)
    if optimizer is not None:
        if not meta.has_optimizer:
            raise CheckpointError(f"{meta.path} holds no optimizer state; start with checkpoint.pretrained instead")
        _materialize_adam_state(optimizer)
        optim_sd = optimizer.sharded_state_dict(
            model_sharded_state_dict(model_chunks), is_loading=True, metadata=_optimizer_metadata(meta.optimizer_format)
        )
        loaded = dist_checkpointing.load({"optimizer": optim_sd}, str(meta.path / "optimizer"))
        _load_optimizer_state(optimizer, loaded["optimizer"])
    state = dict(meta.train_state)
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    return meta, state


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


def _optimizer_metadata(fmt: Optional[str]) -> Optional[dict]:
    if fmt in (None, "model_space"):
        return None
    return {"distrib_optim_sharding_type": fmt}


# Expert parallelism; checkpoints written before MoE have neither key (which is EP1, ETP as TP).
_EXPERT_KEYS = {"expert_model_parallel_size": 1, "expert_tensor_parallel_size": None}


def _same_experts_split(meta: CheckpointMetadata, current: dict) -> bool:
    return all(meta.parallel.get(k, default) == current.get(k, default) for k, default in _EXPERT_KEYS.items())


def same_model_parallel(meta: CheckpointMetadata, parallel) -> bool:
    keys = (
        "tensor_model_parallel_size",
        "pipeline_model_parallel_size",
        "virtual_pipeline_model_parallel_size",
        "context_parallel_size",
    )
    current = asdict(parallel)
    return all(meta.parallel.get(k) == current[k] for k in keys) and _same_experts_split(meta, current)


def same_weight_split(meta: CheckpointMetadata, parallel) -> bool:
    """Whether the weights are split as when saved (TP/PP/VPP); context parallelism splits no weight."""
    keys = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size")
    current = asdict(parallel)
    return all(meta.parallel.get(k) == current[k] for k in keys) and _same_experts_split(meta, current)


def optimizer_loadable(meta: CheckpointMetadata, parallel) -> tuple[bool, str]:
    """Whether megatron-core can load this checkpoint's optimizer state at the current layout, and why not."""
    if not meta.has_optimizer:
        return False, "the checkpoint holds no optimizer state"
    saved_dist = bool(meta.parallel.get("use_distributed_optimizer"))
    if saved_dist != parallel.use_distributed_optimizer:
        return False, "the distributed optimizer was switched on or off since the save"
    saved_ep = int(meta.parallel.get("expert_model_parallel_size") or 1)
    if (saved_ep > 1) != (parallel.expert_model_parallel_size > 1):
        # At EP > 1 megatron-core chains a second optimizer for the experts: another state layout.
        return False, (f"expert parallelism went from EP={saved_ep} to EP={parallel.expert_model_parallel_size} "
                       "(megatron-core keeps the experts' optimizer apart only at EP > 1)")
    fmt = meta.optimizer_format or ("dp_reshardable" if saved_dist else "model_space")
    if same_model_parallel(meta, parallel) or fmt in ("model_space", "fully_reshardable"):
        return True, ""
    return False, (
        f"its optimizer state was saved as {fmt}, which megatron-core reshards over data-parallel ranks only "
        "(save with checkpoint.optimizer_format=fully_reshardable to change TP/PP with the optimizer state)"
    )


def same_layout(meta: CheckpointMetadata, parallel, world_size: int) -> bool:
    """Whether the checkpoint was written by the same TP/PP/VPP/CP/DP layout as this run's."""
    keys = (
        "tensor_model_parallel_size",
        "pipeline_model_parallel_size",
        "virtual_pipeline_model_parallel_size",
        "context_parallel_size",
        "use_distributed_optimizer",
    )
    current = asdict(parallel)
    return (meta.world_size == world_size and all(meta.parallel.get(k) == current[k] for k in keys)
            and _same_experts_split(meta, current))


def load_rng_state(meta: CheckpointMetadata) -> Optional[dict]:
    """This rank's saved RNG state, or None when the checkpoint holds none for it."""
    path = meta.path / RNG_DIR / f"rank_{_rank():05d}.pt"
    if not path.is_file():
        return None
    return torch.load(path, weights_only=False)
