"""Precompute the DPO reference model's log-probabilities once, so training needs no reference model.

Runs the reference (checkpoint.pretrained) at the run's own TP/PP/DP layout over every pair
of every DPO source named in the data config, forward only through the pipeline schedule, and
writes one .npz (see megactllm.data.chat.dpo_dataset.ReferenceLogps). Data-parallel replicas share the
pairs; the last pipeline stage of TP rank 0 of each replica contributes its values to one
all-reduce, and rank 0 writes the file. Train with dpo.reference_logprobs=<that file>.

    torchrun --nproc-per-node 2 tools/precompute_dpo_reference.py --config tiny_dpo.yaml --output ref.npz
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.distributed as dist

from megactllm.config import ConfigError
from megactllm.data.chat.dpo_dataset import DPODataset, save_reference_logps
from megactllm.data.chat.sft_dataset import open_sources, pad_id_of, split_blends
from megactllm.data.blend import Blend
from megactllm.training.batches import collate
from megactllm.training.stages.dpo.task import build_reference_model, forward_only_pair_logps

log = logging.getLogger(__name__)


def dpo_sources(cfg, tokenizer) -> list:
    """Every distinct DPO source of the train/valid/test blends, in first-seen order."""
    prefixes: list[str] = []
    for spec in split_blends(cfg.data):
        if spec is not None:
            prefixes += [p for p in spec[0].prefixes if p not in prefixes]
    return open_sources(Blend(tuple(prefixes), None), "dpo", tokenizer)


def precompute_reference_logps(cfg, tokenizer, output: str, microbatches_per_call: int = 8) -> str:
    """Collective: call on every rank after initialize_parallel. Returns the written path."""
    from megatron.core import parallel_state

    if not cfg.checkpoint.pretrained:
        raise ConfigError("precomputing DPO reference log-probs needs checkpoint.pretrained (the SFT model)")
    chunks = build_reference_model(cfg)
    sources = dpo_sources(cfg, tokenizer)
    all_pairs = np.array([(s, i) for s, r in enumerate(sources) for i in range(len(r))], dtype=np.int64).reshape(-1, 2)
    dataset = DPODataset(sources, all_pairs, cfg.model.seq_length, pad_id_of(tokenizer))
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    mine = np.arange(dp_rank, len(dataset), dp)
    mbs = cfg.train.micro_batch_size
    values = torch.zeros(len(dataset), 2, dtype=torch.float64)
    contributes = parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
    start = time.time()
    per_call = mbs * microbatches_per_call
    for at in range(0, len(mine), per_call):
        batch_ids = mine[at : at + per_call]
        # Full micro-batches only (the pipeline's shapes are fixed): repeat the last pair, drop it after.
        padded = np.concatenate([batch_ids, np.full((-len(batch_ids)) % mbs, batch_ids[-1])])
        microbatches = [collate([dataset[int(i)] for i in padded[k : k + mbs]]) for k in range(0, len(padded), mbs)]
        logps = forward_only_pair_logps(chunks, microbatches, cfg.model.seq_length)
        if contributes:
            flat = torch.cat(logps).double()[: len(batch_ids)]
            values[torch.from_numpy(batch_ids)] = flat.cpu()
        if dist.get_rank() == 0 and (at // per_call) % 10 == 0:
            log.info("reference log-probs: %d / %d pairs of this replica, %.0fs", at + len(batch_ids), len(mine), time.time() - start)
    if dist.is_initialized():
        values = values.to(torch.cuda.current_device()) if torch.cuda.is_available() else values
        dist.all_reduce(values)  # each pair is filled by exactly one rank
        values = values.cpu()
    if not dist.is_initialized() or dist.get_rank() == 0:
        split = np.cumsum([0] + [len(r) for r in sources])
        arrays = [values[split[k] : split[k + 1]].numpy() for k in range(len(sources))]
        meta = {"seq_length": cfg.model.seq_length, "checkpoint": str(cfg.checkpoint.pretrained),
                "tokenizer": tokenizer.describe(), "pairs": len(dataset)}
        save_reference_logps(output, [r.prefix for r in sources], arrays, meta)
    if dist.is_initialized():
        dist.barrier()
    return output
