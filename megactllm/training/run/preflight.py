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
        iters = f"{self.train_iters:,}" if self.train_iters else "set by the dataset (train.train_epochs)"
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
    from megactllm.training.schedule import ScheduleError, num_microbatches, resolve_train_iters
    from megactllm.checkpoint.shape import resolve_model_from_checkpoint

    notes = resolve_data_sources(cfg)
    checkpoint = resolve_model_from_checkpoint(cfg)
    if checkpoint is None:
        _check_tokenizer_fits(cfg)
    _check_stage_options(cfg)
    check_wandb(cfg.train)
    dp = check_layout(cfg.parallel, world_size, cfg.model.num_layers)
    from megactllm.model.builder import check_expert_layout

    check_expert_layout(cfg.model, cfg.parallel)
    check_context_parallel_run(cfg)
    _check_heads_split(cfg)
    microbatches = num_microbatches(cfg, dp)
    try:
        train_iters: Optional[int] = resolve_train_iters(cfg)
    except ScheduleError:
        if cfg.train.train_epochs is None:
            raise
        train_iters = None  # epochs: known once the dataset is built
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


_PATH_KEYS = ("data_path", "train_data_path", "valid_data_path", "test_data_path")
_COMMAND_LINE = "an override"


def resolve_data_sources(cfg: Config) -> list[str]:
    """One source of training data: data.blend_schedule or the data paths, never both.

    A value given on the command line is the user's intent: command-line paths replace a schedule
    that came from the recipe file (and a command-line schedule replaces the recipe's paths), with
    a note saying so. Both from the same place (both on the command line, or both in the recipe)
    is an error naming them. Returns the notes.
    """
    from megactllm.config import ConfigError

    d = cfg.data
    paths = [k for k in _PATH_KEYS if getattr(d, k)]
    if not d.blend_schedule or not paths:
        return []
    schedule_by = cfg.origin("data", "blend_schedule") or "the recipe"
    paths_by = {k: cfg.origin("data", k) or "the recipe" for k in paths}
    named = ", ".join(f"data.{k} (from {by})" for k, by in paths_by.items())
    if all(by == _COMMAND_LINE for by in paths_by.values()) and schedule_by != _COMMAND_LINE:
        d.blend_schedule = []
        return [f"note: {named} replaces the recipe's data.blend_schedule ({schedule_by}): training reads the given data only"]
    if schedule_by == _COMMAND_LINE and _COMMAND_LINE not in paths_by.values():
        for k in paths:
            setattr(d, k, [])
        return [f"note: data.blend_schedule (from the command line) replaces the recipe's {', '.join('data.' + k for k in paths)}"]
    raise ConfigError(
        f"data.blend_schedule (from {schedule_by}) and {named} both name the training data: give one "
        "(data.blend_schedule's phases, or the paths; validation under a schedule reads data.split of its final phase)"
    )


def _check_blend_schedule(cfg: Config, train_iters: Optional[int]) -> None:
    """The schedule parses and covers the run (read by pretraining only), before anything is built."""
    from megactllm.config import ConfigError

    if not cfg.data.blend_schedule:
        return
    if cfg.train.stage != "pretrain":
        raise ConfigError(f"data.blend_schedule is read by stage pretrain only; stage {cfg.train.stage!r} ignores it: remove it")
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


def _check_stage_options(cfg: Config) -> None:
    from megactllm.config import ConfigError

    if cfg.train.stage == "pretrain":
        from megactllm.training.stages.pretrain import check_document_resets

        try:
            check_document_resets(cfg)
        except ValueError as e:  # a plain ValueError in the library; here it is the user's setting
            raise ConfigError(str(e)) from None


def check_context_parallel_run(cfg: Config) -> None:
    """What a context-parallel run needs beyond the layout: equal chunks, and attention that can split."""
    from megactllm.config import ConfigError
    from megactllm.parallel.initialize import check_context_parallel

    check_context_parallel(cfg.parallel, cfg.model.seq_length)
    cp = cfg.parallel.context_parallel_size
    if cp > 1 and cfg.eval.interval:
        # The benchmark backend scores prompts of any length on the parallel model, unsplit.
        raise ConfigError(
            f"eval.interval={cfg.eval.interval} with parallel.context_parallel_size={cp}: in-loop benchmark "
            "evaluation does not split prompts over the CP group; set eval.interval=0 and evaluate the saved "
            "checkpoints (megactllm eval) at context_parallel_size=1"
        )


def _check_heads_split(cfg: Config) -> None:
    from megactllm.parallel.initialize import ParallelLayoutError

    m, tp = cfg.model, cfg.parallel.tensor_model_parallel_size
    problems = []
    if m.num_attention_heads % tp or m.num_kv_heads % tp:
        problems.append(f"{m.num_attention_heads} attention heads / {m.num_kv_heads} key-value heads")
    if m.ffn_hidden_size % tp:
        problems.append(f"ffn_hidden_size {m.ffn_hidden_size}")
    if problems:
        raise ParallelLayoutError(
            f"tensor_model_parallel_size={tp} must divide " + " and ".join(problems) + "; pick a TP that divides them"
        )
