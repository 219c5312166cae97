"""The recipe's sections: every key a YAML recipe (or a `section.key=value` override) may set.

A recipe has one mapping per section (the model section lives in megactllm/config/model.py, since
checkpoints store it). To add a key: one `option(default, doc, range)` line in its section, with a
Literal type for a choice. To add a section: a Section dataclass with NAME and a
docstring here, and one field in Config below (megactllm.config.section says how checks work).
`model.arch` names a base architecture (megactllm.config.architectures); the recipe's other model
keys override it. ModelConfig is the single source of truth for a model's shape: checkpoints store
it and conversion, training and inference read it back from there.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

from megactllm.config.model import ModelConfig
from megactllm.config.section import Section, option

# The stages train.stage may name: the built-in ones, and those megactllm.training.stages.register_stage
# adds (it calls allow_stage). A new built-in stage: its name here and its Task in training/stages.py.
STAGES: list[str] = ["pretrain", "sft", "dpo", "grpo"]


def allow_stage(name: str) -> None:
    """Let recipes name a stage registered outside the built-in ones."""
    if name not in STAGES:
        STAGES.append(name)


# The benchmarks in-loop evaluation can score (megactllm.eval.tasks).
EVAL_TASKS = ("cmmlu", "ceval", "mmlu", "jsonl")


_SCALE = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_UNITS = {"iteration": "iterations", "iter": "iterations", "it": "iterations", "step": "iterations",
          "token": "tokens", "tok": "tokens", "epoch": "epochs", "ep": "epochs"}
# number, scale (K M B G T, then a space: "2 Tokens" is not 2 tera-"okens"), unit
_DURATION = re.compile(r"^\s*([0-9][0-9_,.]*(?:[eE][+-]?[0-9]+)?)\s*((?:[KMBGT](?=\s))?)\s*((?i:[a-z]+?))(?i:s?)\s*$")


@dataclass(frozen=True)
class Duration:
    """How long a run trains: a number of iterations (optimizer steps), of tokens, or of epochs."""

    value: float
    unit: Literal["iterations", "tokens", "epochs"]

    EXPECTED: ClassVar[str] = "a duration such as '1000 iterations', '2B tokens' or '2 epochs'"
    TYPE_NAME: ClassVar[str] = "duration"

    @classmethod
    def parse(cls, value: Any) -> "Duration":
        """'1000 iterations' (iters, steps), '1.25T tokens' (K, M, B, T), '2 epochs'; or the mapping
        {iterations: 1000} or {value: 1000, unit: iterations} (how a Config's dict stores it)."""
        if isinstance(value, dict):
            if set(value) == {"value", "unit"}:
                number, unit = value["value"], value["unit"]
            elif len(value) == 1:
                (unit, number), = value.items()
            else:
                raise ValueError(value)
            unit = _UNITS.get(str(unit).rstrip("s").lower(), str(unit))
        elif isinstance(value, str):
            m = _DURATION.match(value)
            if not m:
                raise ValueError(value)
            number = float(m.group(1).replace("_", "").replace(",", ""))
            scale = _SCALE[m.group(2).upper()]
            number = round(number * scale) if scale > 1 else number  # 1254.68B is a whole number of tokens
            unit = _UNITS.get(m.group(3).lower())
        else:
            raise TypeError(value)
        if unit not in ("iterations", "tokens", "epochs") or isinstance(number, bool):
            raise ValueError(value)
        number = float(number)
        if not (math.isfinite(number) and number > 0) or (unit != "epochs" and number != int(number)):
            raise ValueError(value)
        return cls(int(number) if unit != "epochs" else number, unit)

    def __str__(self) -> str:
        return f"{self.value:g} {self.unit}" if self.unit == "epochs" else f"{int(self.value)} {self.unit}"


@dataclass
class ParallelConfig(Section):
    """How the model and the batch are split over the ranks (world = TP x PP x CP x DP)."""

    NAME: ClassVar[str] = "parallel"

    tensor_model_parallel_size: int = option(1, "TP: ranks splitting each layer's matrices", min=1)
    pipeline_model_parallel_size: int = option(1, "PP: ranks holding consecutive groups of layers", min=1)
    virtual_pipeline_model_parallel_size: Optional[int] = option(
        None, "model chunks per pipeline rank (interleaved 1F1B); null: one", min=1)
    context_parallel_size: int = option(1, "CP: ranks splitting every sequence (long context); "
                                           "model.seq_length must be a multiple of 2 x CP", min=1)
    cp_comm_type: Literal["p2p", "a2a", "all_gather"] = option(
        "p2p", "Transformer Engine's CP attention on GPUs: p2p (ring), a2a (Ulysses-style) or all_gather")
    sequence_parallel: bool = option(False, "split layer norms and dropout over the TP ranks (needs TP > 1)")
    use_distributed_optimizer: bool = option(False, "shard the optimizer state over data-parallel ranks")
    recompute_granularity: Optional[Literal["selective", "full"]] = option(
        None, "activation recompute: selective (core attention only), full, or null (none)")
    recompute_method: Optional[Literal["uniform", "block"]] = option(
        None, "with full recompute: uniform or block")
    recompute_num_layers: Optional[int] = option(None, "layers per recompute unit (full recompute)", min=1)
    overlap_grad_reduce: bool = option(False, "overlap the gradient reduce with the backward pass")
    overlap_param_gather: bool = option(False, "overlap the parameter all-gather with the forward pass "
                                               "(distributed optimizer)")
    distributed_backend: Optional[Literal["nccl", "gloo"]] = option(None, "null: nccl on CUDA, gloo on CPU")
    expert_model_parallel_size: int = option(1, "EP: ranks splitting the experts (whole experts each; EP divides "
                                                "the data-parallel ranks x CP)", min=1)
    expert_tensor_parallel_size: Optional[int] = option(None, "ranks splitting each expert's weights; null: as TP",
                                                        min=1)
    moe_token_dispatcher_type: Literal["alltoall", "allgather"] = option(
        "alltoall", "how tokens reach their experts' ranks (megatron-core's dispatchers; both run on CPU)")
    distributed_timeout_minutes: int = option(10, "how long a collective may wait before the run fails", min=1)

    def check_layers(self, num_layers: int) -> None:
        """The layers split evenly over the pipeline stages (PP x VPP)."""
        stages = self.pipeline_model_parallel_size * (self.virtual_pipeline_model_parallel_size or 1)
        if num_layers % stages:
            self.fail("pipeline_model_parallel_size", f"x virtual stages = {stages} pipeline stages must divide "
                                                      f"the model's {num_layers} layers")

    def check_experts(self, model: "ModelConfig") -> None:
        """Expert parallelism splits whole experts: EP must divide them (and needs an MoE model)."""
        ep = self.expert_model_parallel_size
        if ep > 1 and not model.is_moe:
            self.fail("expert_model_parallel_size", f"needs a model with experts (model family {model.family} has "
                                                    "none): set it to 1")
        if model.is_moe and model.num_moe_experts % ep:
            self.fail("expert_model_parallel_size", f"must divide model.num_moe_experts={model.num_moe_experts}: "
                                                    "each EP rank holds the same number of whole experts")

    def check(self) -> None:
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            self.fail("sequence_parallel", "needs parallel.tensor_model_parallel_size > 1")
        vpp = self.virtual_pipeline_model_parallel_size
        if vpp and vpp > 1 and self.pipeline_model_parallel_size == 1:
            self.fail("virtual_pipeline_model_parallel_size", "needs parallel.pipeline_model_parallel_size > 1")
        if (self.recompute_method or self.recompute_num_layers) and self.recompute_granularity != "full":
            key = "recompute_method" if self.recompute_method else "recompute_num_layers"
            self.fail(key, "applies to parallel.recompute_granularity=full only")


_SPLIT = re.compile(r"^\s*\d+(\.\d+)?\s*(,\s*\d+(\.\d+)?\s*){0,2}$")


@dataclass
class DataConfig(Section):
    """Where the training tokens come from and how they are read."""

    NAME: ClassVar[str] = "data"

    data_path: list = option(doc="Megatron's blend: [\"0.6\", zh_prefix, \"0.4\", en_prefix] or [prefix], "
                                 "split by data.split", factory=list)
    train_data_path: list = option(doc="the training split's own blend (replaces data_path + split)", factory=list)
    valid_data_path: list = option(doc="the validation split's own blend", factory=list)
    test_data_path: list = option(doc="the test split's own blend", factory=list)
    split: str = option("969,30,1", "train,valid,test weights of data_path")
    tokenizer_type: Literal["sentencepiece", "huggingface"] = option("sentencepiece", "the tokenizer's kind")
    tokenizer_model: Optional[str] = option(None, "the tokenizer file (tokenizer.model, tokenizer.json)")
    data_cache_path: Optional[str] = option(None, "where megatron-core keeps its sample indices")
    reset_position_ids: bool = option(False, "restart positions at each document (needs reset_attention_mask)")
    reset_attention_mask: bool = option(False, "attend within each document only (local layer spec)")
    eod_mask_loss: bool = option(True, "no loss on end-of-document tokens")
    blend_schedule: list = option(
        doc="phases of the training mixture, replacing data_path (stage pretrain): [{name, end_iteration | "
            "end_tokens, blend: [\"0.3\", a, \"0.7\", b]}, ...]; the last may have no end", factory=list)
    allow_blend_schedule_change: bool = option(False, "resume under a schedule other than the checkpoint's")
    packing: bool = option(True, "SFT/DPO: pack several conversations into one sequence")
    prompts_path: Optional[str] = option(None, "GRPO: the prompts, jsonl records {question, answer, ...}; the "
                                               "other fields reach the rewards")

    def check(self) -> None:
        if not _SPLIT.match(self.split) or not sum(float(x) for x in self.split.split(",")) > 0:
            self.fail("split", "must be up to three comma-separated weights (train,valid,test), e.g. '969,30,1'")
        if self.reset_position_ids and not self.reset_attention_mask:
            self.fail("reset_position_ids", "needs data.reset_attention_mask=true: with RoPE, positions only "
                                            "matter relative to each other, so restarting them changes nothing "
                                            "unless attention is also restricted to each document")


@dataclass
class OptimConfig(Section):
    """The optimizer (megatron-core's), its learning-rate schedule and the numeric precision."""

    NAME: ClassVar[str] = "optim"

    optimizer: Literal["adam", "sgd"] = option("adam", "megatron-core's optimizer (adam is AdamW)")
    lr: float = option(2e-4, "peak learning rate", min=0)
    min_lr: float = option(2e-5, "learning rate at the end of the decay", min=0)
    adam_beta1: float = option(0.9, "Adam beta1", min=0, below=1)
    adam_beta2: float = option(0.95, "Adam beta2", min=0, below=1)
    adam_eps: float = option(1e-8, "Adam epsilon", above=0)
    weight_decay: float = option(0.1, "decoupled weight decay", min=0)
    clip_grad: float = option(1.0, "clip the global gradient norm to this (0: no clipping)", min=0)
    lr_warmup_iters: int = option(0, "linear warmup from 0, in iterations", min=0)
    lr_warmup_fraction: Optional[float] = option(None, "warmup as a fraction of the decay iterations "
                                                       "(instead of lr_warmup_iters)", min=0, max=1)
    lr_decay_style: Literal["cosine", "linear", "constant", "WSD", "inverse-square-root"] = option(
        "cosine", "how the LR falls from lr to min_lr after warmup (WSD: warmup, stable, decay)")
    lr_decay_iters: Optional[int] = option(None, "iterations of warmup + decay; null: the whole run", min=1)
    lr_wsd_decay_style: Literal["exponential", "linear", "cosine", "minus_sqrt"] = option(
        "exponential", "the shape of WSD's final decay")
    lr_wsd_decay_iters: Optional[int] = option(None, "WSD's final decay, in iterations; null: a tenth of the decay",
                                               min=1)
    bf16: bool = option(False, "bf16 weights and compute (fp32 master weights in the optimizer)")
    fp16: bool = option(False, "fp16 with loss scaling")
    initial_loss_scale: float = option(2.0**16, "fp16: the dynamic loss scale's start", above=0)
    loss_scale: Optional[float] = option(None, "fp16: a static loss scale; null: dynamic", above=0)

    def check(self) -> None:
        if self.bf16 and self.fp16:
            self.fail("fp16", "and optim.bf16 are both true: pick one")
        if self.min_lr > self.lr:
            self.fail("min_lr", f"must not exceed optim.lr={self.lr:g}")
        if self.lr_warmup_fraction is not None and self.lr_warmup_iters:
            self.fail("lr_warmup_fraction", f"and optim.lr_warmup_iters={self.lr_warmup_iters} both set the "
                                            "warmup: give one")
        if self.lr_wsd_decay_iters and self.lr_decay_style != "WSD":
            self.fail("lr_wsd_decay_iters", "applies to optim.lr_decay_style=WSD only")


@dataclass
class TrainConfig(Section):
    """What is trained, on batches of what size, for how long."""

    NAME: ClassVar[str] = "train"

    stage: str = option("pretrain", "pretrain (next-token loss on documents), sft (on assistant turns), dpo "
                                    "(preference pairs), grpo (rollouts and rewards), or a stage registered by "
                                    "megactllm.training.stages")
    seed: int = option(1234, "seed of the initial weights and the data order", min=0)
    micro_batch_size: int = option(1, "samples per forward pass on one rank (DPO: pairs)", min=1)
    global_batch_size: int = option(8, "samples per optimizer step over all data-parallel ranks", min=1)
    duration: Optional[Duration] = option(
        None, "how long to train: '1000 iterations', '2B tokens' (one iteration reads global_batch_size x "
              "seq_length tokens) or '2 epochs' (sft and dpo); required to train")

    def check(self) -> None:
        if self.stage not in STAGES:
            self.fail("stage", f"must be one of {', '.join(STAGES)}")
        if self.global_batch_size % self.micro_batch_size:
            self.fail("global_batch_size", f"must be a multiple of train.micro_batch_size={self.micro_batch_size}")
        if self.duration is not None and self.duration.unit == "epochs" and self.stage in ("pretrain", "grpo"):
            self.fail("duration", f"in epochs needs a finite training set (stage sft or dpo); give {self.stage} "
                                  "iterations" + (" or tokens" if self.stage == "pretrain" else ""))
        if self.duration is not None and self.duration.unit == "tokens" and self.stage == "grpo":
            self.fail("duration", "of a GRPO run counts steps (one step = one rollout batch): give iterations")


@dataclass
class ValidationConfig(Section):
    """Validation loss on the valid split during training."""

    NAME: ClassVar[str] = "validation"

    interval: int = option(100, "validate every this many iterations (0: never)", min=0)
    iters: int = option(10, "global batches per validation (always the same first ones, so losses compare)",
                        min=0)


@dataclass
class CheckpointConfig(Section):
    """Where the run saves, what it resumes from, and the format of the optimizer state."""

    NAME: ClassVar[str] = "checkpoint"

    save: Optional[str] = option(None, "directory to save checkpoints in (null: none)")
    # Not refused without `save`: setting save=null is how a recipe with an interval turns saving off.
    interval: Optional[int] = option(None, "save every this many iterations (and at the end) where "
                                           "checkpoint.save is set", min=1)
    async_save: bool = option(False, "write checkpoints in a background process while training goes on")
    load: Optional[str] = option(None, "resume from the latest checkpoint here (weights, optimizer, counters) "
                                       "when there is one")
    pretrained: Optional[str] = option(None, "initialise weights from this checkpoint with a fresh optimizer, "
                                             "schedule and counters (continued pretraining, SFT, DPO)")
    reshard_optimizer: bool = option(False, "resuming at another TP/PP layout: reshard Adam's moments too "
                                            "(else fresh moments)")
    optimizer_format: Literal["dp_reshardable", "fully_reshardable"] = option(
        "dp_reshardable", "the distributed optimizer on disk: dp_reshardable (fast; reshards over DP only) "
                          "or fully_reshardable (reshards over TP/PP/DP)")


@dataclass
class StabilityConfig(Section):
    """What happens to non-finite and spiky steps and to known bad data."""

    NAME: ClassVar[str] = "stability"

    max_consecutive_nonfinite: int = option(3, "stop after this many non-finite steps in a row (each is skipped)",
                                            min=1)
    skip_spiky_steps: bool = option(False, "do not apply a step whose loss or grad norm is spike_sigma standard "
                                           "deviations above the mean of the last spike_window applied steps")
    spike_window: int = option(128, "applied steps the spike statistics look back over", min=2)
    spike_sigma: float = option(6.0, "how many standard deviations make a spike", above=0)
    spike_rollback_after: int = option(0, "after this many spikes in a row reload the last checkpoint and skip "
                                          "the samples read since (0: off)", min=0)
    spike_max_rollbacks: int = option(3, "more rollbacks than this stop the run", min=0)
    skip_samples: list = option(doc="sample windows [[start, end], ...) of the training order never read",
                                factory=list)

    def check(self) -> None:
        for i, w in enumerate(self.skip_samples):
            if not (isinstance(w, (list, tuple)) and len(w) == 2 and all(type(x) is int for x in w)
                    and 0 <= w[0] < w[1]):
                self.fail("skip_samples", f"window {i} ({w!r}) is not [start, end) with 0 <= start < end")
        if self.spike_rollback_after and not self.skip_spiky_steps:
            self.fail("spike_rollback_after", "acts on spikes: set stability.skip_spiky_steps=true")


@dataclass
class LoggingConfig(Section):
    """The log line, metrics.jsonl, TensorBoard, MFU and the straggler report."""

    NAME: ClassVar[str] = "logging"

    interval: int = option(10, "log every this many iterations", min=1)
    dir: Optional[str] = option(None, "metrics.jsonl and loss_curve.png; null: checkpoint.save, else "
                                      "tensorboard_dir, else runs/latest")
    tensorboard_dir: Optional[str] = option(None, "TensorBoard event files (null: none)")
    peak_tflops: Optional[float] = option(None, "dense peak TFLOP/s of one device for MFU; null: 989 on "
                                                "H100/H200, no MFU elsewhere", above=0)
    straggler_ratio: float = option(1.2, "warn when the slowest rank's step time stays above this x the median",
                                    min=1)


@dataclass
class WandbConfig(Section):
    """Weights & Biases (the extra `wandb`): rank 0 logs every TensorBoard scalar; WANDB_MODE=offline
    writes the run with no network."""

    NAME: ClassVar[str] = "wandb"

    project: Optional[str] = option(None, "the W&B project; setting it switches W&B on")
    entity: Optional[str] = option(None, "the W&B team or user")
    dir: Optional[str] = option(None, "where wandb writes; null: the log dir (the run id kept there lets a "
                                      "resumed run continue the same W&B run)")
    name: Optional[str] = option(None, "the run's display name")

    def check(self) -> None:
        if not self.project:
            for key in ("entity", "dir", "name"):
                if getattr(self, key):
                    self.fail(key, "needs wandb.project (which switches W&B on)")


@dataclass
class RunConfig(Section):
    """How the process stops early and guards its directory."""

    NAME: ClassVar[str] = "run"

    exit_interval: Optional[int] = option(None, "stop (after saving, when checkpoint.interval divides it) at the "
                                                "first iteration that is a multiple", min=1)
    exit_duration_minutes: Optional[float] = option(None, "stop (save, exit 75 to be resumed) once this many "
                                                          "minutes passed since the process started (0: after the first step)", min=0)
    lock_stale_minutes: float = option(10.0, "checkpoint.save/run.lock with no heartbeat for this long is "
                                             "taken over", above=0)
    check_memory: bool = option(True, "refuse, before building, a run whose estimated per-rank memory exceeds "
                                      "the device's (or the machine's free RAM)")


@dataclass
class DpoConfig(Section):
    """Direct preference optimisation (train.stage=dpo)."""

    NAME: ClassVar[str] = "dpo"

    beta: float = option(0.5, "strength of the implicit KL penalty to the reference model", above=0)
    label_smoothing: float = option(0.0, "conservative DPO: the probability that a pair's label is flipped",
                                    min=0, below=0.5)
    loss_type: Literal["sigmoid", "ipo"] = option("sigmoid", "sigmoid (the DPO paper's) or ipo")
    reference_logprobs: Optional[str] = option(None, "precomputed reference log-probs (megactllm "
                                                     "precompute-dpo-reference): no reference model in memory")

    def check(self) -> None:
        if self.label_smoothing and self.loss_type == "ipo":
            self.fail("label_smoothing", "applies to the sigmoid DPO loss, not to ipo: set it to 0")


@dataclass
class GRPOConfig(Section):
    """Group relative policy optimisation (train.stage=grpo, megactllm.training.stages.grpo): one
    iteration is one rollout batch and its updates."""

    NAME: ClassVar[str] = "grpo"

    group_size: int = option(8, "completions sampled per prompt (the group of the advantage)", min=2)
    prompts_per_step: int = option(8, "prompts per step over all data-parallel ranks (= train.global_batch_size, "
                                      "which follows it when not set)", min=1)
    max_completion_tokens: int = option(256, "longest completion sampled", min=1)
    temperature: float = option(1.0, "sampling temperature of the rollouts", above=0)
    top_p: float = option(1.0, "nucleus sampling of the rollouts", above=0, max=1)
    clip_low: float = option(0.2, "the ratio is clipped to [1 - clip_low, 1 + clip_high] (DAPO: 0.2 / 0.28)",
                             min=0, below=1)
    clip_high: float = option(0.2, "see clip_low", min=0)
    kl_coeff: float = option(0.0, "k3 KL to the frozen reference; 0 builds no reference (and saves its memory)",
                             min=0)
    kl_ratio_correction: bool = option(False, "weight the k3 KL by the ratio (DeepSeek-V3.2's unbiased gradient; "
                                              "TRL's use_bias_correction_kl)")
    loss_normalization: Literal["sequence", "token"] = option("sequence", "sequence (GRPO) or token (DAPO, "
                                                                          "Dr. GRPO)")
    updates_per_batch: int = option(1, "optimizer steps on each rollout batch (TRL's num_iterations)", min=1)
    rewards: list[str] = option(doc="rewards: math, format or module:function", factory=lambda: ["math"])
    reward_weights: list[float] = option(doc="one weight per reward; empty: 1.0 each", factory=list)
    scale_rewards: bool = option(True, "divide the centred rewards by the group's std (false: Dr. GRPO)")

    def check(self) -> None:
        if not self.rewards:
            self.fail("rewards", "must name at least one reward: math, format or module:function")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            self.fail("reward_weights", f"must hold one weight per reward ({len(self.rewards)}: {self.rewards})")


@dataclass
class EvalConfig(Section):
    """In-loop benchmark evaluation (megactllm.eval.inloop) on the live model."""

    NAME: ClassVar[str] = "eval"

    interval: int = option(0, "score the benchmarks every this many iterations (0: off)", min=0)
    tasks: list = option(doc="benchmarks: cmmlu, ceval, mmlu, jsonl", factory=lambda: ["cmmlu"])
    data_dir: Optional[str] = option(None, "the benchmark root, e.g. ../shared/data/eval")
    subjects: list = option(doc="subjects to score; empty: every one; \"cmmlu:agronomy\" names one task's",
                            factory=list)
    shots: int = option(0, "few-shot examples per question", min=0, max=5)
    max_questions: Optional[int] = option(None, "questions per subject; null: all", min=1)
    batch_size: int = option(8, "requests per forward pass", min=1)
    max_length: Optional[int] = option(None, "longest prompt; null: model.max_position_embeddings or seq_length",
                                       min=1)

    def check(self) -> None:
        for task in self.tasks:
            if task not in EVAL_TASKS:
                self.fail("tasks", f"holds {task!r}; tasks are {', '.join(EVAL_TASKS)}")
        if self.interval and not self.data_dir:
            self.fail("interval", "needs eval.data_dir (the benchmark root, e.g. ../shared/data/eval)")


@dataclass
class Config:
    """The whole recipe. Constructing it checks each section, then the relations between sections."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    stability: StabilityConfig = dataclasses.field(default_factory=StabilityConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    dpo: DpoConfig = dataclasses.field(default_factory=DpoConfig)
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        self._origins: dict = {}
        self.notes: list = []
        self.check()

    def check(self) -> None:
        """Relations between sections. Called again once the model section comes from a checkpoint."""
        m, p, t = self.model, self.parallel, self.train
        tp, cp = p.tensor_model_parallel_size, p.context_parallel_size
        if m.num_attention_heads % tp or m.num_kv_heads % tp:
            p.fail("tensor_model_parallel_size", f"must divide the {m.num_attention_heads} attention heads and "
                                                 f"{m.num_kv_heads} key-value heads of the model")
        if m.ffn_hidden_size % tp:
            p.fail("tensor_model_parallel_size", f"must divide model.ffn_hidden_size={m.ffn_hidden_size}")
        p.check_layers(m.num_layers)
        p.check_experts(m)
        if cp > 1 and m.seq_length % (2 * cp):
            m.fail("seq_length", f"is not divisible by 2 x parallel.context_parallel_size = {2 * cp}: context "
                                 f"parallelism cuts each sequence into {2 * cp} equal chunks; pick a sequence "
                                 f"length that is a multiple of {2 * cp} or another context_parallel_size")
        if cp > 1 and self.eval.interval:
            self.eval.fail("interval", f"with parallel.context_parallel_size={cp}: in-loop benchmark evaluation "
                                       "does not split prompts over the CP group; set eval.interval=0 and evaluate "
                                       "the saved checkpoints (megactllm eval) at context_parallel_size=1")
        if self.data.blend_schedule and t.stage != "pretrain":
            self.data.fail("blend_schedule", f"is read by stage pretrain only; train.stage={t.stage!r} "
                                             "ignores it: remove it", value="[...]")
        if t.stage == "grpo":
            self._check_grpo()
        c = self.checkpoint
        if t.stage == "dpo" and c.load and not c.pretrained and not self.dpo.reference_logprobs:
            c.fail("load", "with train.stage=dpo needs checkpoint.pretrained (the SFT model) to rebuild the "
                           "reference on resume (the policy has moved away from it), or dpo.reference_logprobs")
        s = self.stability
        if s.spike_rollback_after and not (self.checkpoint.save and self.checkpoint.interval):
            s.fail("spike_rollback_after", "reloads the last checkpoint: set checkpoint.save and checkpoint.interval")
        iters = self.known_train_iters()
        if iters is not None:
            check_warmup(self, iters)

    def _check_grpo(self) -> None:
        g, t = self.grpo, self.train
        if self.parallel.context_parallel_size > 1:
            self.parallel.fail("context_parallel_size", "with train.stage=grpo is not supported yet")
        if self.model.is_moe:  # the in-memory hand-over to the rollout engine maps dense layers only so far
            self.model.fail("num_moe_experts", "with train.stage=grpo is not supported yet")
        if t.global_batch_size != g.prompts_per_step:
            t.fail("global_batch_size", f"differs from grpo.prompts_per_step={g.prompts_per_step}: a GRPO step "
                                        "reads prompts_per_step prompts; drop train.global_batch_size")
        if g.max_completion_tokens >= self.model.seq_length:
            g.fail("max_completion_tokens", f"leaves no room for a prompt in model.seq_length={self.model.seq_length}")
        if not self.data.prompts_path:
            self.data.fail("prompts_path", "is needed by train.stage=grpo (the prompts, a jsonl file)")

    def known_train_iters(self) -> Optional[int]:
        """The run's iterations when the recipe alone decides them (iterations or tokens), else None."""
        d = self.train.duration
        if d is None or d.unit == "epochs":
            return None
        if d.unit == "iterations":
            return int(d.value)
        return max(1, math.ceil(d.value / (self.train.global_batch_size * self.model.seq_length)))

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if self.train.duration is not None:
            out["train"]["duration"] = str(self.train.duration)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def origin(self, section: str, key: str) -> Optional[str]:
        """Where the user set section.key ("the recipe", "an override", "model.arch=NAME"), or None for a default."""
        return self._origins.get(f"{section}.{key}")


def check_warmup(cfg: Config, train_iters: int) -> None:
    """The warmup fits in the decay; train_iters from the recipe, or from the dataset for epochs."""
    o = cfg.optim
    decay = o.lr_decay_iters or train_iters
    warmup = int(o.lr_warmup_fraction * decay) if o.lr_warmup_fraction is not None else o.lr_warmup_iters
    if warmup > decay:
        key = "lr_warmup_iters" if o.lr_warmup_fraction is None else "lr_warmup_fraction"
        o.fail(key, f"gives {warmup} warmup iterations, more than the {decay} of the decay "
                    f"({'optim.lr_decay_iters' if o.lr_decay_iters else 'the whole run'})")


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}
for _name, _cls in SECTIONS.items():  # one name per section: the recipe's and the class's
    assert _cls.NAME == _name, (_cls, _name)
