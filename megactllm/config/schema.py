"""Run configuration: dataclasses loaded from a YAML recipe and overridden with `section.key=value`.

A recipe has one mapping per section (model, parallel, data, optim, train). `model.arch` names a
base architecture (see megactllm.config.architectures); the recipe's other model keys override it.
ModelConfig is the single source of truth for a model's shape: checkpoints store it and conversion,
training and inference read it back from there.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional

from megactllm.common import recipe
from megactllm.errors import UserError


# Rows the built embedding is padded to (times TP), beyond vocab_size; masked, never saved in exports.
LAYOUT_VOCAB_MULTIPLE = 128


def _round_up(n: int, multiple: int) -> int:
    return ((n + multiple - 1) // multiple) * multiple


@dataclass
class ModelConfig:
    arch: Optional[str] = None
    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: int = 176
    num_attention_heads: int = 4
    # None means plain multi-head attention (as many key/value heads as query heads).
    num_query_groups: Optional[int] = None
    # Per-head dimension; None means hidden_size // num_attention_heads.
    kv_channels: Optional[int] = None
    seq_length: int = 128
    max_position_embeddings: Optional[int] = None
    # The embedding's rows (exported as HF config vocab_size). The tokenizer may have fewer ids:
    # rows past its last id are padding, never produced, sampled or scored.
    vocab_size: int = 32000
    # Megatron's option: a fresh model's rows are the tokenizer's ids rounded up to this multiple
    # (the multiple alone, not times TP: the rows, and so checkpoints and exports, do not depend on
    # the layout). None: the rows are vocab_size as given. A checkpoint's rows are its own.
    make_vocab_size_divisible_by: Optional[int] = None
    rotary_base: float = 10000.0
    norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = False
    init_method_std: float = 0.02
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    add_bias_linear: bool = False
    # The model family (megactllm.model.families): llama, qwen2, qwen3, mistral. Metadata written
    # before families existed has none of the fields below, which is LLaMA's defaults.
    family: str = "llama"
    add_qkv_bias: bool = False  # biases on Q, K and V only (Qwen2)
    qk_layernorm: bool = False  # RMSNorm on each head's queries and keys before RoPE (Qwen3)
    # RoPE frequency scaling: None or "llama3" (with its factor; megatron-core's fixed low/high
    # frequency factors 1 and 4 and original length 8192, which the importer checks).
    rope_scaling: Optional[str] = None
    rope_scaling_factor: Optional[float] = None
    # Attention window of the HF model (Mistral); training refuses sequences longer than it.
    sliding_window: Optional[int] = None
    # Mixture of experts (qwen3_moe, qwen2_moe): None is a dense model. Each MoE layer routes a token
    # to moe_router_topk of num_moe_experts SwiGLU experts of width moe_ffn_hidden_size.
    num_moe_experts: Optional[int] = None
    moe_router_topk: int = 2
    moe_ffn_hidden_size: Optional[int] = None
    # Renormalise the top-k routing probabilities to sum to 1 (HF norm_topk_prob).
    moe_norm_topk_prob: bool = True
    # One always-on shared expert of this width (Qwen2-MoE), scaled by sigmoid(gate . x) when gated.
    moe_shared_expert_intermediate_size: Optional[int] = None
    moe_shared_expert_gate: bool = False
    # Per layer 1 (MoE) or 0 (dense SwiGLU of ffn_hidden_size); None: every layer is MoE.
    moe_layer_pattern: Optional[list] = None
    # Load-balancing (Switch/GShard aux) loss and router z-loss coefficients; 0 / None: off.
    moe_aux_loss_coeff: float = 0.0
    moe_z_loss_coeff: Optional[float] = None

    @property
    def is_moe(self) -> bool:
        return bool(self.num_moe_experts)

    def moe_layers(self) -> list:
        """Per layer: True where the MLP is a mixture of experts."""
        if not self.is_moe:
            return [False] * self.num_layers
        if self.moe_layer_pattern is None:
            return [True] * self.num_layers
        return [bool(x) for x in self.moe_layer_pattern]

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    def padded_vocab_size(self, tensor_parallel_size: int = 1) -> int:
        """The rows as built at a layout: vocab_size rounded up to LAYOUT_VOCAB_MULTIPLE x TP.

        A layout detail (the vocabulary-parallel split wants equal shards): these extra rows get a
        logit of -inf in the model and are never exported.
        """
        multiple = LAYOUT_VOCAB_MULTIPLE * tensor_parallel_size
        return _round_up(self.vocab_size, multiple)

    def rows_for_tokenizer(self, tokenizer_ids: int) -> int:
        """A fresh model's rows for a tokenizer: its ids rounded up to make_vocab_size_divisible_by, if set."""
        if not self.make_vocab_size_divisible_by:
            return self.vocab_size
        return _round_up(tokenizer_ids, self.make_vocab_size_divisible_by)


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None
    # Split every sequence over this many ranks (long context); model.seq_length % (2 x CP) == 0.
    context_parallel_size: int = 1
    # Transformer Engine's CP attention on GPUs: p2p (ring), a2a (Ulysses-style) or all_gather.
    cp_comm_type: str = "p2p"
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    # None, "selective" (core attention only) or "full".
    recompute_granularity: Optional[str] = None
    recompute_method: Optional[str] = None  # "uniform" or "block", with full recompute
    recompute_num_layers: Optional[int] = None
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    distributed_backend: Optional[str] = None  # None: nccl on CUDA, gloo on CPU
    # Mixture of experts: experts split over EP ranks (EP divides the data-parallel ranks x CP);
    # each expert's weights split over ETP ranks (None: as TP).
    expert_model_parallel_size: int = 1
    expert_tensor_parallel_size: Optional[int] = None
    # How tokens reach their experts' ranks: "alltoall" or "allgather" (megatron-core dispatchers).
    moe_token_dispatcher_type: str = "alltoall"
    distributed_timeout_minutes: int = 10


@dataclass
class DataConfig:
    # Megatron's blend form: ["0.6", "zh_prefix", "0.4", "en_prefix"] or ["prefix"].
    data_path: list = field(default_factory=list)
    # Separate blends per split; when set they replace data_path + split.
    train_data_path: list = field(default_factory=list)
    valid_data_path: list = field(default_factory=list)
    test_data_path: list = field(default_factory=list)
    split: str = "969,30,1"
    tokenizer_type: str = "sentencepiece"  # "sentencepiece" or "huggingface"
    tokenizer_model: Optional[str] = None
    data_cache_path: Optional[str] = None
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    eod_mask_loss: bool = True
    # Phases of the training mixture, replacing data_path (see megactllm/data/pretrain/blend_schedule.py):
    # [{name, end_iteration | end_tokens, blend: ["0.3", a, "0.7", b]}, ...]; the last may have no end.
    blend_schedule: list = field(default_factory=list)
    # Resume under a schedule other than the checkpoint's (else a clear error).
    allow_blend_schedule_change: bool = False
    # SFT / DPO: prefixes written by tools/preprocess_sft.py or tools/preprocess_dpo.py, blended by weight.
    packing: bool = True
    # GRPO: the prompts, jsonl records {question, answer, ...}; the other fields reach the rewards.
    prompts_path: Optional[str] = None


@dataclass
class OptimConfig:
    optimizer: str = "adam"
    lr: float = 2e-4
    min_lr: float = 2e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    weight_decay: float = 0.1
    clip_grad: float = 1.0
    lr_warmup_iters: int = 0
    lr_warmup_fraction: Optional[float] = None
    lr_decay_style: str = "cosine"  # cosine, linear, constant, WSD
    lr_decay_iters: Optional[int] = None
    lr_wsd_decay_style: str = "exponential"
    lr_wsd_decay_iters: Optional[int] = None
    bf16: bool = False
    fp16: bool = False
    initial_loss_scale: float = 2.0**16
    loss_scale: Optional[float] = None  # static loss scale for fp16; None means dynamic


@dataclass
class TrainConfig:
    stage: str = "pretrain"  # pretrain, sft, dpo, grpo
    seed: int = 1234
    micro_batch_size: int = 1
    global_batch_size: int = 8
    train_iters: Optional[int] = None
    train_tokens: Optional[int] = None
    train_epochs: Optional[float] = None
    eval_interval: int = 100
    eval_iters: int = 10
    log_interval: int = 10
    save: Optional[str] = None
    save_interval: Optional[int] = None
    # Write checkpoints in a background process while training goes on; the latest pointer moves
    # once every rank's write is on disk (megactllm.checkpoint.async_save).
    async_save: bool = False
    load: Optional[str] = None
    # Initialise weights from this checkpoint with a fresh optimizer, schedule and counters
    # (continued pretraining, SFT from a pretrained model, DPO from an SFT model).
    pretrained_checkpoint: Optional[str] = None
    tensorboard_dir: Optional[str] = None
    max_consecutive_nonfinite: int = 3
    # Spiky steps (training/callbacks/spikes.py): a step whose loss or grad norm is more than spike_sigma standard
    # deviations above the mean of the last spike_window applied steps is not applied (LR and data go
    # on). Never before the window holds max(min(16, window), window // 4) steps.
    skip_spiky_steps: bool = False
    spike_window: int = 128
    spike_sigma: float = 6.0
    # After this many spikes in a row reload the last checkpoint and skip the samples read since (0: off);
    # more than spike_max_rollbacks rollbacks stop the run.
    spike_rollback_after: int = 0
    spike_max_rollbacks: int = 3
    # Sample windows [start, end) of the training order never read (PaLM's skipped batches).
    skip_samples: list = field(default_factory=list)
    # Straggler report (world > 1): warn when the slowest rank's step time stays above this x the median.
    straggler_ratio: float = 1.2
    # Stop (after saving, when save_interval divides it) at the first iteration that is a multiple.
    exit_interval: Optional[int] = None
    # Stop (save, exit 75 to be resumed) once this many minutes passed since the process started.
    exit_duration_minutes: Optional[float] = None
    # {save}/run.lock: a lock with no heartbeat for this long is taken over (training/run/lock.py).
    lock_stale_minutes: float = 10.0
    # metrics.jsonl and loss_curve.png; default: the save dir, else tensorboard_dir, else runs/latest.
    log_dir: Optional[str] = None
    # Weights & Biases (the extra `wandb`): a project switches it on; rank 0 logs every TensorBoard
    # scalar. dir default: the log dir; the run id is kept there, so a resumed run continues it.
    # WANDB_MODE=offline writes the run under dir with no network (`wandb sync` uploads it later).
    wandb_project: Optional[str] = None
    wandb_entity: Optional[str] = None
    wandb_dir: Optional[str] = None
    wandb_name: Optional[str] = None
    # Dense peak TFLOP/s of one device for MFU; None: 989 on H100/H200, no MFU elsewhere.
    peak_tflops: Optional[float] = None
    # Resuming at another TP/PP/DP layout: also let megatron-core reshard the optimizer state
    # (its model-space format); false loads weights, schedule and counters with fresh Adam moments.
    reshard_optimizer: bool = False
    # Distributed optimizer on disk: dp_reshardable (parallel, fast; reshards over DP only) or
    # fully_reshardable (gathered per parameter; reshards over TP/PP/DP). See training/checkpoint.py.
    optimizer_checkpoint_format: str = "dp_reshardable"
    # Refuse, before building, a run whose estimated per-rank memory exceeds the device's (or the
    # machine's free RAM); see megactllm.training.run.memory_estimate. false skips the check.
    check_memory: bool = True
    # DPO
    dpo_beta: float = 0.5
    dpo_label_smoothing: float = 0.0
    dpo_loss_type: str = "sigmoid"  # sigmoid or ipo
    dpo_reference_logprobs: Optional[str] = None  # precomputed reference log-probs file


@dataclass
class GRPOConfig:
    """train.stage=grpo (megactllm.training.stages.grpo): one train_iters step = one rollout batch + its updates."""

    group_size: int = 8  # completions sampled per prompt (the group of the advantage)
    prompts_per_step: int = 8  # prompts per step over all data-parallel ranks (= train.global_batch_size)
    max_completion_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    clip_low: float = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high] (DAPO: 0.2 / 0.28)
    clip_high: float = 0.2
    kl_coeff: float = 0.0  # k3 KL to the frozen reference; 0 builds no reference (and saves its memory)
    # Weight the k3 KL by the ratio (DeepSeek-V3.2's unbiased gradient; TRL's use_bias_correction_kl).
    kl_ratio_correction: bool = False
    loss_normalization: str = "sequence"  # sequence (GRPO) or token (DAPO, Dr. GRPO)
    updates_per_batch: int = 1  # optimizer steps on each rollout batch (TRL's num_iterations)
    rewards: list = field(default_factory=lambda: ["math"])  # math, format, module:function
    reward_weights: list = field(default_factory=list)  # empty: 1.0 each
    scale_rewards: bool = True  # divide the centred rewards by the group's std (false: Dr. GRPO)

    def __post_init__(self):
        def bad(key, why):
            raise ConfigError(f"grpo.{key}={getattr(self, key)!r}: {why}")

        if self.group_size < 2:
            bad("group_size", "a group needs at least 2 completions (the advantage compares them)")
        for key in ("prompts_per_step", "max_completion_tokens", "updates_per_batch"):
            if getattr(self, key) < 1:
                bad(key, "must be at least 1")
        if self.temperature <= 0:
            bad("temperature", "must be positive (the rollouts sample)")
        if not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            bad("clip_low" if not 0 <= self.clip_low < 1 else "clip_high", "clip_low in [0, 1), clip_high >= 0")
        if self.kl_coeff < 0:
            bad("kl_coeff", "must be >= 0")
        if self.loss_normalization not in ("sequence", "token"):
            bad("loss_normalization", "one of sequence, token")
        if isinstance(self.rewards, str):
            self.rewards = [self.rewards]
        if not self.rewards:
            bad("rewards", "name at least one reward: math, format or module:function")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            bad("reward_weights", f"one weight per reward ({len(self.rewards)}: {self.rewards})")


@dataclass
class EvalConfig:
    """In-loop benchmark evaluation (megactllm.eval.inloop): every `interval` iterations (0: off)."""

    interval: int = 0
    tasks: list = field(default_factory=lambda: ["cmmlu"])  # cmmlu, ceval, mmlu, jsonl
    data_dir: Optional[str] = None  # benchmark root, e.g. ../shared/data/eval
    subjects: list = field(default_factory=list)  # empty: every subject; "cmmlu:agronomy" names one task's
    shots: int = 0
    max_questions: Optional[int] = None  # per subject
    batch_size: int = 8
    max_length: Optional[int] = None  # default: model.max_position_embeddings or seq_length


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def origin(self, section: str, key: str) -> Optional[str]:
        """Where the user set section.key ("the recipe", "an override", "model.arch=NAME"), or None for a default."""
        return getattr(self, "_origins", {}).get(f"{section}.{key}")


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
_SECTION_CLASSES = {
    "model": ModelConfig,
    "parallel": ParallelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "grpo": GRPOConfig,
}


class ConfigError(UserError, ValueError):
    pass


def _coerce_floats(cls, values: dict, where: str) -> dict:
    # YAML 1.1 reads `2e-4` (no dot) as a string; float fields take it as the number it means.
    out = dict(values)
    for f in dataclasses.fields(cls):
        value = out.get(f.name)
        if isinstance(value, str) and "float" in str(f.type):
            try:
                out[f.name] = float(value)
            except ValueError:
                raise ConfigError(f"{where}: {f.name}={value!r} is not a number") from None
    return out


def _build_section(cls, values: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} in section; known keys: {sorted(known)}")
    return cls(**_coerce_floats(cls, values, where))


def model_config_from_dict(values: dict, where: str = "model config") -> ModelConfig:
    """ModelConfig from a mapping; `arch` picks a named architecture that the other keys override."""
    values = dict(values)
    arch = values.get("arch")
    if arch:
        from megactllm.config.architectures import get_architecture

        base = dataclasses.asdict(get_architecture(arch))
        base.update(values)
        values = base
    return _build_section(ModelConfig, values, where)


_OVERRIDE_EXAMPLE = "train.train_iters=100"


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    return recipe.apply_overrides(raw, overrides, _SECTION_CLASSES, ConfigError, _OVERRIDE_EXAMPLE)


def _origins(raw: dict, overridden: set) -> dict:
    """section.key -> who set it; a named architecture sets every model field it defines."""
    origins = {}
    model = raw.get("model") or {}
    if model.get("arch"):
        from megactllm.config.architectures import get_architecture

        arch_fields = dataclasses.asdict(get_architecture(model["arch"]))
        origins.update({f"model.{k}": f"model.arch={model['arch']}" for k in arch_fields if k != "arch"})
    for section, values in raw.items():
        for key in values or {}:
            name = f"{section}.{key}"
            origins[name] = "an override" if name in overridden else "the recipe"
    return origins


def config_from_dict(raw: dict, where: str = "config") -> Config:
    unknown = sorted(set(raw) - set(_SECTION_CLASSES))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; sections: {sorted(_SECTION_CLASSES)}")
    sections = {}
    for name, cls in _SECTION_CLASSES.items():
        values = raw.get(name) or {}
        if name == "model":
            sections[name] = model_config_from_dict(values, f"{where} [model]")
        else:
            sections[name] = _build_section(cls, values, f"{where} [{name}]")
    return Config(**sections)


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    raw = recipe.load_recipe(path, overrides or [], _SECTION_CLASSES, ConfigError, "config file", _OVERRIDE_EXAMPLE)
    cfg = config_from_dict(raw, where=path or "config")
    # Which keys the user set (recipe or override) and which are defaults: a checkpoint's metadata
    # fills the defaults and must agree with the rest (megactllm.checkpoint.shape).
    overridden = {item.split("=", 1)[0] for item in overrides or []}
    cfg._origins = _origins(raw, overridden)
    return cfg
