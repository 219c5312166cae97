"""Everything megactllm.train checks before it builds anything, and what `--dry-run` prints.

    plan = preflight(cfg, world_size)     # raises a user error naming what to fix
    print(plan.report())                   # the estimate, the layout and the schedule

In order: the model section from the checkpoint the run starts from (shape_from_checkpoint), the
parallel layout against the world size and the model, the batch schedule, and the per-rank memory
estimate against the device's (or the machine's) free memory. Every rank runs the same checks on
the same inputs, so every rank reaches the same verdict without talking to the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from megactllm.config import Config
from megactllm.model.families import family_of
from megactllm.training.run.wandb_sink import check_wandb
from megactllm.training.run.memory_estimate import GIB, Available, MemoryEstimate


@dataclass
class Plan:
    cfg: Config
    world_size: int
    data_parallel_size: int
    checkpoint: Optional[str]
    estimate: MemoryEstimate
    available: Optional[Available]
    fits: bool
    train_iters: Optional[int]
    microbatches: int
    notes: list = field(default_factory=list)  # what the checks changed, one log line each (rank 0 prints them)

    def report(self) -> str:
        p, t, m, o = self.cfg.parallel, self.cfg.train, self.cfg.model, self.cfg.optim
        pp, vpp = p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size or 1
        if pp == 1:
            schedule = "no pipelining (forward and backward per micro-batch)"
        elif vpp > 1:
            schedule = f"interleaved 1F1B, {vpp} model chunks per stage"
        else:
            schedule = "1F1B"
        dtype = "bf16" if o.bf16 else "fp16" if o.fp16 else "fp32"
        iters = f"{self.train_iters:,}" if self.train_iters else "set by the dataset (train.duration)"
        tokens = f", {self.train_iters * t.global_batch_size * m.seq_length:,} tokens" if self.train_iters else ""
        lines = [
            f"model: {m.arch or 'custom'} from {self.checkpoint or 'the recipe'}: {m.num_layers} layers, hidden "
            f"{m.hidden_size}, FFN {m.ffn_hidden_size}, {m.num_attention_heads} heads ({m.num_kv_heads} key-value), "
            f"vocabulary {m.vocab_size:,} (padded {m.padded_vocab_size(p.tensor_model_parallel_size):,}), "
            f"sequence {m.seq_length}, {family_of(m).num_parameters(m):,} parameters, {dtype}",
            f"layout: world {self.world_size} = TP {p.tensor_model_parallel_size} x PP {pp} x CP "
            f"{p.context_parallel_size} x DP {self.data_parallel_size}; VPP {vpp}, "
            f"{m.num_layers // (pp * vpp)} layers per model chunk; sequence parallel "
            f"{'on' if p.sequence_parallel else 'off'}; distributed optimizer "
            f"{'on' if p.use_distributed_optimizer else 'off'}; recompute {p.recompute_granularity or 'none'}",
            f"schedule: stage {t.stage}, {iters} iterations{tokens}; global batch {t.global_batch_size} = "
            f"{self.microbatches} micro-batches of {t.micro_batch_size} x DP {self.data_parallel_size}; {schedule}; "
            f"LR {o.lr:g} -> {o.min_lr:g} {o.lr_decay_style}, warmup {o.lr_warmup_fraction or o.lr_warmup_iters}"
            f"{' (fraction)' if o.lr_warmup_fraction else ' iterations'}",
            f"memory: {self.estimate.describe()}",
        ]
        if self.available is not None:
            need = self.estimate.total * self.available.ranks_sharing
            lines.append(
                f"available: {self.available.where}; needed {need / GIB:.2f} GiB: "
                + ("fits" if self.fits else "does NOT fit")
            )
        return "\n".join(lines)


def preflight(cfg: Config, world_size: int, check_memory: bool = True, raise_if_unfit: bool = True) -> Plan:
    """Resolve and check the run before anything is built; raises the user error that names the fix."""
    from megactllm.errors import MemoryFitError
    from megactllm.parallel.initialize import check_layout
    from megactllm.training.run.memory_estimate import available_memory, check_fits, estimate_memory
    from megactllm.training.schedule import num_microbatches, resolve_train_iters
    from megactllm.checkpoint.shape import resolve_model_from_checkpoint

    notes = list(cfg.notes)
    checkpoint = resolve_model_from_checkpoint(cfg)
    if checkpoint is None:
        _check_tokenizer_fits(cfg)
    else:
        cfg.check()  # the model section now comes from the checkpoint: the relations again
    _check_document_resets(cfg)
    check_wandb(cfg.wandb)
    dp = check_layout(cfg.parallel, world_size)
    microbatches = num_microbatches(cfg, dp)
    train_iters: Optional[int] = None  # epochs: known once the dataset is built
    if cfg.train.duration is None or cfg.train.duration.unit != "epochs":
        train_iters = resolve_train_iters(cfg)
    _check_blend_schedule(cfg, train_iters)
    available, fits = None, True
    estimate = estimate_memory(cfg, world_size)
    if check_memory:
        available = available_memory()
        try:
            check_fits(cfg, world_size, available)
        except MemoryFitError:
            fits = False
            if raise_if_unfit:
                raise
    return Plan(cfg, world_size, dp, checkpoint, estimate, available, fits, train_iters, microbatches, notes)


def _check_blend_schedule(cfg: Config, train_iters: Optional[int]) -> None:
    """The schedule parses and covers the run (read by pretraining only), before anything is built."""
    from megactllm.config import ConfigError

    if not cfg.data.blend_schedule:
        return
    from megactllm.data.pretrain.blend_schedule import BlendSchedule, parse_schedule

    if train_iters is None:
        parse_schedule(cfg.data.blend_schedule)
    else:
        BlendSchedule.from_config(cfg, train_iters)


def _check_tokenizer_fits(cfg: Config) -> None:
    """A fresh model's rows hold every id of the tokenizer (model.make_vocab_size_divisible_by may set them)."""
    from megactllm.config import ConfigError
    from megactllm.tokenizer import load_tokenizer, tokenizer_file
    from megactllm.tokenizer.vocab_fit import fit_model_to_tokenizer

    d = cfg.data
    if not d.tokenizer_model:
        return
    # What the tokenizer loader accepts (a file, or an HF tokenizer directory), else what is missing.
    try:
        tokenizer_file(d.tokenizer_type, d.tokenizer_model, what="data.tokenizer_model")
        tokenizer = load_tokenizer(d.tokenizer_type, d.tokenizer_model)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e) if str(e).startswith("data.tokenizer_model") else
                          f"data.tokenizer_model {d.tokenizer_model}: {e}") from None
    fit_model_to_tokenizer(cfg, tokenizer)


def _check_document_resets(cfg: Config) -> None:
    if cfg.train.stage == "pretrain":
        from megactllm.training.stages.pretrain import check_document_resets

        check_document_resets(cfg)
