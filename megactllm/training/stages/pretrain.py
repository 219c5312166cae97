"""Stage `pretrain`: next-token loss over megatron-core GPT samples of a weighted blend.

`loss_func` returns (sum of per-token losses under the loss mask, number of masked-in tokens,
report): the loop divides by the global token count, so tokens after an end-of-document are
excluded (data.eod_mask_loss) and every layout averages exactly as one process does.
"""
from __future__ import annotations

from functools import partial

import torch

from megactllm.config import Config
from megactllm.data.pretrain.gpt_dataset import build_gpt_datasets
from megactllm.training.context_parallel import split_for_context_parallel
from megactllm.training.schedule import dataset_sample_counts, resolve_train_iters
from megactllm.training.stages.task import StageCapabilities

LM_LOSS = "lm loss"


def masked_lm_loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    """(loss sum, token count, report) of one micro-batch; per_token_loss is [b, s] from GPTModel."""
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(per_token_loss.float().reshape(-1) * mask)
    count = mask.sum().to(torch.int)
    report = {LM_LOSS: torch.stack([loss_sum.detach(), mask.sum().detach()])}
    return loss_sum, count, report


def check_document_resets(cfg: Config) -> None:
    """Refuse a document mask this machine cannot apply: Transformer Engine's fused causal attention
    takes no per-sample mask (data.reset_position_ids without the mask is refused by the recipe)."""
    from megactllm.config import ConfigError
    from megactllm.model import transformer_engine_available

    d = cfg.data
    if d.reset_attention_mask and transformer_engine_available():
        raise ConfigError(
            "data.reset_attention_mask needs the local layer spec; Transformer Engine's fused causal "
            "attention takes no per-document mask"
        )


class PretrainTask:
    name = "pretrain"
    provides = StageCapabilities(perplexity=True, blend_schedule=True)

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg

    def build_datasets(self, cfg: Config, tokenizer):
        from megatron.core import parallel_state

        self.cfg = cfg
        train_iters = resolve_train_iters(cfg)
        sizes = dataset_sample_counts(cfg, train_iters)
        if cfg.data.blend_schedule:
            from megactllm.data.pretrain.blend_schedule import BlendSchedule
            from megactllm.data.pretrain.scheduled_blend import build_scheduled_gpt_datasets

            return build_scheduled_gpt_datasets(
                cfg.data, BlendSchedule.from_config(cfg, train_iters), cfg.model.seq_length, cfg.train.seed,
                sizes[1], tokenizer, parallel_state.get_data_parallel_world_size(),
            )
        return build_gpt_datasets(
            cfg.data,
            seq_length=cfg.model.seq_length,
            seed=cfg.train.seed,
            sizes=sizes,
            tokenizer=tokenizer,
            data_parallel_size=parallel_state.get_data_parallel_world_size(),
        )

    def prepare_global_batch(self, microbatches, model_chunks):
        return microbatches

    def forward_step(self, data_iterator, model):
        # With context parallelism, this rank's two chunks of each sequence (the mask's query rows).
        batch = split_for_context_parallel(next(data_iterator))
        # The [b, 1, s, s] document mask exists only with data.reset_attention_mask; else causal.
        mask = batch.get("attention_mask")
        output = model(batch["tokens"], batch["position_ids"], mask, labels=batch["labels"])
        return output, partial(masked_lm_loss, batch["loss_mask"])

    def metric_names(self) -> list[str]:
        return [LM_LOSS]
