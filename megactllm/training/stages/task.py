"""What a training stage (pretrain, sft, dpo) plugs into the one shared training loop.

The loop owns everything that is the same for every stage: process groups, the model chunks and
their DDP wrapping, the optimizer and LR schedule, megatron-core's pipeline schedules, gradient
clipping, non-finite handling, checkpoints, logging and evaluation. A Task owns what differs:
which datasets are read, how a micro-batch is turned into a loss, and which extra metrics exist.

Loss convention (megatron-core's `calculate_per_token_loss`): `loss_func(output_tensor)` returns
`(loss_sum, count, report)` where `loss_sum` is the summed loss of the micro-batch, `count` the
number of units it averages over (tokens for LM losses, pairs for DPO) as an int tensor, and
`report` maps metric names to `torch.stack([value_sum, count])` pairs. The loop divides gradients
and every reported metric by the global count summed over micro-batches and data-parallel ranks,
so a run at any TP/PP/DP layout averages exactly as a single process does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import torch

from megactllm.config import Config

# A micro-batch: a dict of tensors shaped [micro_batch_size, ...] (tokens, labels, loss_mask, ...).
MicroBatch = dict
LossFunc = Callable[[torch.Tensor], tuple]


@dataclass(frozen=True)
class StageCapabilities:
    """What a stage declares to the loop, instead of the loop probing it for attributes."""

    # Rows the model runs per dataset sample: DPO feeds chosen and rejected together (2), so the
    # schedule's micro-batch is that much taller and every row counts in consumed_tokens.
    sequences_per_sample: int = 1
    # Turns a micro-batch's items into tensors; None: megactllm.training.batches.collate.
    collate: Optional[Callable[[list], dict]] = None
    # The first metric is a per-token NLL, so validation reports its perplexity (not DPO's loss).
    perplexity: bool = False
    # The training set may follow data.blend_schedule (its dataset then has a `schedule`).
    blend_schedule: bool = False
    # Optimizer steps per prepared global batch (GRPO's updates on one rollout batch); the LR
    # schedule counts every one of them.
    updates_per_batch: int = 1


class Task(Protocol):
    name: str
    provides: StageCapabilities

    def build_datasets(self, cfg: Config, tokenizer: Any) -> tuple[Optional[Sequence], Optional[Sequence], Optional[Sequence]]:
        """Train, valid and test datasets (map-style; items are dicts of numpy arrays of equal shapes).

        Called on every rank after process groups exist; None for a split that is not used.
        """

    def prepare_global_batch(self, microbatches: list[MicroBatch], model_chunks: list) -> list[MicroBatch]:
        """Called once per step with the step's micro-batches (already collated tensors on the device)
        before the forward/backward schedule runs; returns them, possibly augmented. DPO uses this to
        run the frozen reference model through the same pipeline schedule (forward only) and attach
        reference log-probabilities. Default: return them unchanged."""

    def forward_step(self, data_iterator: Iterator[MicroBatch], model) -> tuple[torch.Tensor, LossFunc]:
        """megatron-core forward_step_func: next micro-batch -> (output_tensor, loss_func)."""

    def metric_names(self) -> list[str]:
        """Names of the entries of `report` to log (e.g. ['lm loss'] or DPO's rewards/accuracy)."""
