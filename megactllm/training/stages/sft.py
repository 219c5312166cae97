"""Stage `sft`: supervised fine-tuning on chat data, loss on assistant tokens only.

The shared loop starts from checkpoint.pretrained and runs megatron-core's schedules; this
task reads the SFT mixture (megactllm.data.chat.sft_dataset) and turns a micro-batch into a per-token
loss: `loss_func` returns (sum of masked token losses, number of masked tokens, report), so the
loop's division by the global token count averages exactly as one process over the whole batch.

Every pipeline stage reads the micro-batch: the attention mask of packed rows (built here from
segment_ids) is needed by the attention layers of every stage.
"""
from __future__ import annotations

from functools import partial

import torch

from megactllm.data.chat.sft_dataset import build_sft_datasets
from megactllm.training.context_parallel import split_for_context_parallel
from megactllm.training.stages.task import StageCapabilities


def attention_mask_from_segments(segment_ids: torch.Tensor) -> torch.Tensor | None:
    """Block-diagonal causal mask for packed rows: [b, 1, s, s], True where attention is blocked.

    None when no row holds more than one sample: the model's own causal mask is then exact, since
    real tokens never look ahead at the padding that follows them. RoPE only sees relative
    positions, so with this mask a packed sample computes exactly what it computes alone.
    """
    if int(segment_ids.max()) <= 1:
        return None
    from megactllm.model.builder import transformer_engine_available

    if transformer_engine_available():
        # TE's fused attention would ignore an arbitrary mask under its causal mask type.
        raise NotImplementedError(
            "packed SFT rows need the local attention spec; with Transformer Engine set data.packing=false"
        )
    s = segment_ids.shape[-1]
    same = segment_ids.unsqueeze(-1) == segment_ids.unsqueeze(-2)  # [b, s, s]
    causal = torch.ones(s, s, dtype=torch.bool, device=segment_ids.device).tril()
    return ~(same & causal).unsqueeze(1)


def model_rows(batch: dict) -> dict:
    """tokens, labels, loss_mask, position_ids and attention_mask (None: causal) of this CP rank.

    The packed rows' mask is built on the whole sequence first, then cut with the other fields, so
    document boundaries stay exact inside and across the context-parallel chunks.
    """
    rows = {k: batch[k] for k in ("tokens", "labels", "loss_mask", "position_ids")}
    rows["attention_mask"] = attention_mask_from_segments(batch["segment_ids"]) if "segment_ids" in batch else None
    return split_for_context_parallel(rows)


def model_forward(model, rows: dict) -> torch.Tensor:
    """Per-token losses [b, s] (-log p of each label) on the last stage, hidden states elsewhere.

    `rows` come from model_rows; a raw batch (no attention_mask key) goes through it here.
    """
    if "attention_mask" not in rows:
        rows = model_rows(rows)
    return model(rows["tokens"], rows["position_ids"], rows.get("attention_mask"), labels=rows["labels"])


def masked_token_loss(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """(loss sum, token count, report) over the masked-in tokens of one micro-batch."""
    mask = loss_mask.float().reshape(-1)
    loss_sum = torch.sum(output_tensor.float().reshape(-1) * mask)
    count = mask.sum().to(torch.int)
    report = {"lm loss": torch.stack([loss_sum.detach().clone(), count.detach().float()])}
    return loss_sum, count, report


class SFTTask:
    name = "sft"
    provides = StageCapabilities(perplexity=True)

    def __init__(self, cfg=None) -> None:
        self.cfg = cfg
        self.datasets = None

    def build_datasets(self, cfg, tokenizer):
        self.cfg = cfg
        self.datasets = build_sft_datasets(cfg, tokenizer)
        return self.datasets

    def prepare_global_batch(self, microbatches, model_chunks):
        return microbatches

    def forward_step(self, data_iterator, model):
        rows = model_rows(next(data_iterator))
        return model_forward(model, rows), partial(masked_token_loss, rows["loss_mask"])

    def metric_names(self) -> list[str]:
        return ["lm loss"]
