"""What a user watches in a mixture-of-experts run: the routers' auxiliary losses and how many
tokens each expert received, so a collapse onto a few experts is seen (every logging.interval).

The record gets `moe`: {aux_loss, z_loss (when on), tokens_max/layer_{i}, tokens_min/layer_{i}} —
the load-balancing and z losses (megatron-core's tracker, mean over MoE layers, per micro-batch,
without their coefficients) and, per MoE layer, the most and fewest tokens any one expert got per
step over the whole global batch (a token goes to k experts: per layer the counts sum to k x
tokens). metrics.jsonl, TensorBoard and W&B get them as train/moe/<name>.

Counts are summed over data-parallel (and context-parallel) ranks, which route different tokens;
under sequence parallelism over the TP ranks too (each routes its slice of the sequence), and over
pipeline stages (each fills its own layers).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from megactllm.training.callbacks.base import PRIORITY_NOTES, Callback, Step


class ExpertLoad(Callback):
    name = "expert_load"
    priority = PRIORITY_NOTES

    def __init__(self, cfg, log_interval: int):
        self.model_cfg, self.parallel = cfg.model, cfg.parallel
        self.log_interval = log_interval
        self.counts = torch.zeros(cfg.model.num_layers, cfg.model.num_moe_experts, dtype=torch.float64)
        self.steps = 0
        self.hooks = []

    def on_train_start(self, trainer) -> None:
        from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker

        for chunk in trainer.model:
            for module in chunk.modules():
                if type(module).__name__ == "TopKRouter":
                    self.hooks.append(module.register_forward_hook(self._count))
        clear_aux_losses_tracker()

    def _count(self, router, args, output) -> None:
        if not router.training:
            return  # validation and in-loop evaluation route too; the metric is training's
        _probs, routing_map = output
        self.counts[router.layer_number - 1] += routing_map.sum(dim=0).to(self.counts.device, torch.float64)

    def on_step_end(self, trainer, step: Step) -> None:
        from megatron.core import parallel_state
        from megatron.core.transformer.moe.moe_utils import (
            clear_aux_losses_tracker,
            get_moe_layer_wise_logging_tracker,
            reduce_aux_losses_tracker_across_ranks,
        )

        self.steps += 1
        if step.iteration % self.log_interval and step.iteration != trainer.train_iters:
            return
        moe_layers = [i for i, moe in enumerate(self.model_cfg.moe_layers()) if moe]
        record = {}
        tracker = get_moe_layer_wise_logging_tracker()
        if tracker:
            reduce_aux_losses_tracker_across_ranks()
            per_step = self.steps * trainer.num_microbatches
            for name, short in (("load_balancing_loss", "aux_loss"), ("z_loss", "z_loss")):
                if name in tracker:
                    values = tracker[name]["values"].double().cpu()
                    record[short] = float(values[moe_layers].mean()) / per_step
            clear_aux_losses_tracker()
        counts = self.counts.to(trainer.device)
        groups = [parallel_state.get_data_parallel_group(with_context_parallel=True),
                  parallel_state.get_pipeline_model_parallel_group()]
        if self.parallel.sequence_parallel:
            groups.append(parallel_state.get_tensor_model_parallel_group())
        for group in groups:
            if dist.get_world_size(group) > 1:
                dist.all_reduce(counts, group=group)
        counts = counts.cpu() / self.steps
        for i in moe_layers:
            record[f"tokens_max/layer_{i}"] = float(counts[i].max())
            record[f"tokens_min/layer_{i}"] = float(counts[i].min())
        step.notes["moe"] = record
        self.counts.zero_()
        self.steps = 0

    def on_close(self, trainer) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
