"""Stage `dpo`: preference alignment of the policy against a frozen reference, on the same TP/PP/DP model.

Items hold a pair ([2, seq_length] arrays: chosen row, rejected row), so a micro-batch of
`micro_batch_size` pairs runs as 2 x micro_batch_size sequences: the schedule's micro_batch_size
is scaled by `sequences_per_sample` (both halves of a pair always sit in the same micro-batch).

The reference is the policy's starting checkpoint (checkpoint.pretrained, the SFT model),
built with the same parallel layout, without gradients or optimizer state. Once per step,
`prepare_global_batch` runs it through megatron-core's pipeline schedule, forward only, over the
step's micro-batches and attaches `reference_logps` [mbs, 2] to each (on the last pipeline stage,
where the loss is computed). With dpo.reference_logprobs the values come precomputed with
the data (see megactllm.training.stages.dpo.reference) and no reference model is built.

`loss_func` returns (sum of per-pair losses, number of pairs, report): the loop's division by the
global pair count averages exactly as one process would over the whole global batch.
"""
from __future__ import annotations

import logging
from functools import partial

import torch

from megactllm.config import ConfigError
from megactllm.data.chat.dpo_dataset import build_dpo_datasets
from megactllm.training.stages.dpo.loss import dpo_loss
from megactllm.training.context_parallel import is_context_parallel_leader, sum_over_context_parallel
from megactllm.training.stages.sft import model_forward, model_rows
from megactllm.training.stages.task import StageCapabilities

log = logging.getLogger(__name__)

METRICS = ["dpo loss", "rewards/accuracy", "rewards/chosen", "rewards/rejected", "rewards/margin", "logps/chosen", "logps/rejected"]


def flatten_pairs(batch: dict) -> dict:
    """[mbs, 2, s] pair tensors -> [2 * mbs, s] rows (chosen, rejected, chosen, rejected, ...)."""
    return {k: v.reshape(-1, v.shape[-1]) for k, v in batch.items() if k != "reference_logps"}


def sequence_logps(output_tensor: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of response-token log-probs per row; the model's output is -log p per token.

    With context parallelism each rank holds part of every row: the sum runs over the CP group.
    """
    return sum_over_context_parallel(-(output_tensor.float() * loss_mask.float()).sum(dim=-1))


def pair_logps(output_tensor: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """[pairs, 2] (chosen, rejected) sequence log-probs of a flattened micro-batch."""
    return sequence_logps(output_tensor, loss_mask).view(-1, 2)


def _unwrap(module):
    """The GPTModel inside DDP / Float16Module wrappers."""
    from megatron.core.models.gpt import GPTModel

    while not isinstance(module, GPTModel) and hasattr(module, "module"):
        module = module.module
    return module


def build_reference_model(cfg, policy_chunks: list | None = None) -> list:
    """Frozen reference chunks at the policy's layout: checkpoint.pretrained, else a copy of
    the policy as it is now (valid only before its first update: the loop calls us at step 1)."""
    from megatron.core import tensor_parallel

    from megactllm.model import build_model

    # Building initialises weights from the RNGs; keep the training streams where they were.
    cpu_state = torch.get_rng_state()
    tracker_states = tensor_parallel.get_cuda_rng_tracker().get_states()
    try:
        chunks = build_model(cfg.model, cfg.parallel, cfg.optim)
    finally:
        torch.set_rng_state(cpu_state)
        tensor_parallel.get_cuda_rng_tracker().set_states(tracker_states)
    if cfg.checkpoint.pretrained:
        from megactllm.checkpoint import Checkpointer

        Checkpointer.load_weights(cfg.checkpoint.pretrained, chunks, cfg.model)
    elif policy_chunks is not None:  # not resuming: the recipe refuses checkpoint.load without pretrained
        log.warning("DPO without checkpoint.pretrained: the reference is a copy of the initial policy")
        for ref, policy in zip(chunks, policy_chunks):
            ref.load_state_dict(_unwrap(policy).state_dict(), strict=True)
    else:
        raise ConfigError("the DPO reference model needs checkpoint.pretrained")
    if cfg.optim.bf16 or cfg.optim.fp16:
        from megatron.core.transformer.module import Float16Module

        chunks = [Float16Module(chunk.config, chunk) for chunk in chunks]
    for chunk in chunks:
        chunk.requires_grad_(False)
        chunk.eval()
    return chunks


def forward_only_pair_logps(chunks: list, microbatches: list[dict], seq_length: int) -> list[torch.Tensor] | None:
    """[mbs, 2] sequence log-probs of each micro-batch through the pipeline schedule, forward only.

    Returns the list on the last pipeline stage, None on the others.
    """
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def forward_step(data_iterator, model):
        batch = model_rows(flatten_pairs(next(data_iterator)))
        output = model_forward(model, batch)

        def loss_func(output_tensor):
            logps = pair_logps(output_tensor, batch["loss_mask"]).detach()
            return output_tensor.new_zeros(()), {"logps": logps}

        return output, loss_func

    rows = 2 * microbatches[0]["tokens"].shape[0]
    with torch.no_grad():
        results = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=[iter(microbatches) for _ in chunks],
            model=chunks,
            num_microbatches=len(microbatches),
            seq_length=seq_length,
            micro_batch_size=rows,
            forward_only=True,
        )
    if not parallel_state.is_pipeline_last_stage():
        return None
    return [r["logps"] for r in results]


def dpo_loss_func(dpo_cfg, loss_mask: torch.Tensor, reference_logps: torch.Tensor | None, output_tensor: torch.Tensor):
    """(loss sum over pairs, pair count, report) for one micro-batch."""
    if reference_logps is None:
        raise RuntimeError("DPO micro-batch without reference_logps: prepare_global_batch did not run on this stage")
    policy = pair_logps(output_tensor, loss_mask)
    reference = reference_logps.to(policy.device).float().view(-1, 2)
    out = dpo_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1],
                   beta=dpo_cfg.beta, label_smoothing=dpo_cfg.label_smoothing, loss_type=dpo_cfg.loss_type)
    # Every CP rank computes the same pair losses (each backpropagates into its own tokens); one counts them.
    leader = is_context_parallel_leader()
    pairs = torch.tensor(policy.shape[0] if leader else 0, dtype=torch.int, device=policy.device)

    def stat(values: torch.Tensor) -> torch.Tensor:
        return torch.stack([values.detach().float().sum() * float(leader), pairs.float()])

    loss_sum = out.losses.sum()
    report = {
        "dpo loss": stat(out.losses),
        "rewards/accuracy": stat(out.accuracies),
        "rewards/chosen": stat(out.chosen_rewards),
        "rewards/rejected": stat(out.rejected_rewards),
        "rewards/margin": stat(out.margins),
        "logps/chosen": stat(policy[:, 0]),
        "logps/rejected": stat(policy[:, 1]),
    }
    return loss_sum, pairs, report


class DPOTask:
    name = "dpo"
    # Both rows of a pair in one micro-batch: the schedule's micro_batch_size = 2 x train.micro_batch_size.
    provides = StageCapabilities(sequences_per_sample=2)

    def __init__(self, cfg=None) -> None:
        self.cfg = cfg
        self.reference_chunks: list | None = None
        self.datasets = None

    def build_datasets(self, cfg, tokenizer):
        self.cfg = cfg
        self.datasets = build_dpo_datasets(cfg, tokenizer)
        return self.datasets

    def prepare_global_batch(self, microbatches, model_chunks):
        if all("reference_logps" in mb for mb in microbatches):
            return microbatches  # precomputed
        if self.reference_chunks is None:
            self.reference_chunks = build_reference_model(self.cfg, model_chunks)
        logps = forward_only_pair_logps(self.reference_chunks, microbatches, self.cfg.model.seq_length)
        if logps is not None:
            for mb, lp in zip(microbatches, logps):
                mb["reference_logps"] = lp
        return microbatches

    def forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        rows = model_rows(flatten_pairs(batch))
        output = model_forward(model, rows)
        return output, partial(dpo_loss_func, self.cfg.dpo, rows["loss_mask"], batch.get("reference_logps"))

    def metric_names(self) -> list[str]:
        return list(METRICS)
