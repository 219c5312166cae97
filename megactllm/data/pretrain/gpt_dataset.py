"""Pretraining samples: megatron-core's GPTDataset and BlendedMegatronDatasetBuilder over our datasets.

A blend is written Megatron's way (megactllm.data.blend parses it), e.g.
`["0.6", "zh_prefix", "0.3", "en_prefix", "0.1", "code_prefix"]`. Either one blend split by
`split` ("969,30,1") into train/valid/test, or one blend per split.

megatron-core does the work: per-dataset document/sample/shuffle indices (cached as .npy under
`cache_dir`), the weighted blend, the EOD loss mask and the document-boundary resets. What we add
is the glue: parsing, checking each prefix before megatron opens it (a clear error naming the file),
the EOD id from the tokenizer or the datasets' own metadata, and the per-split sample counts.

Note on `reset_position_ids`: megatron-core's GPTModel applies RoPE by sequence offset and ignores
position_ids, so with RoPE only `reset_attention_mask` changes what the model sees (the local layer
spec honours the per-sample mask; Transformer Engine's causal kernels do not take one).
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

from megactllm.data.blend import Blend, BlendError, check_files, parse_blend
from megactllm.data.pretrain.indexed import (
    DatasetFormatError,
    IndexedDatasetReader,
    read_metadata,
)

logger = logging.getLogger(__name__)


def check_prefixes(blend: Blend, where: str) -> None:
    """Open each dataset once with our reader: a missing or truncated file is named before megatron runs."""
    check_files(blend, where)
    for prefix in blend.prefixes:
        reader = IndexedDatasetReader(prefix)
        if reader.num_tokens == 0:
            raise DatasetFormatError(f"{where}: dataset {prefix} holds no tokens")


class MegatronTokenizerView:
    """The few tokenizer attributes megatron-core's GPTDataset reads (eod, pad, vocab size)."""

    def __init__(self, eod_id: int, vocab_size: int):
        self.eod = int(eod_id)
        self.vocab_size = int(vocab_size)
        # Pretraining streams hold no padding: -1 never matches a token, so nothing is masked as pad.
        self.pad = -1
        # megatron hashes this into its index-cache names.
        self.unique_identifiers = {"class": "megactllm", "eod": self.eod, "vocab_size": self.vocab_size}


def eod_and_vocab(blends: Sequence[Blend], tokenizer=None) -> tuple[int, int]:
    """EOD id and vocabulary: from the tokenizer, else from the datasets' sidecars (which must agree)."""
    seen = {}
    for blend in blends:
        for prefix in blend.prefixes:
            meta = read_metadata(prefix) or {}
            if "eod_id" in meta:
                seen[prefix] = (int(meta["eod_id"]), int(meta.get("vocab_size") or 0))
    if tokenizer is not None:
        for prefix, (eod, vocab) in seen.items():
            if eod != tokenizer.eod_id or (vocab and vocab != tokenizer.vocab_size):
                raise DatasetFormatError(
                    f"{prefix}.json says the data was tokenized with eod={eod}, vocab={vocab}, but the configured "
                    f"tokenizer {tokenizer.model_path} has eod={tokenizer.eod_id}, vocab={tokenizer.vocab_size}"
                )
        return tokenizer.eod_id, tokenizer.vocab_size
    if not seen:
        raise DatasetFormatError(
            "no tokenizer configured (data.tokenizer_model) and no dataset sidecar ({prefix}.json) names an "
            "eod_id: set data.tokenizer_model so the end-of-document id is known"
        )
    values = set(seen.values())
    if len(values) > 1:
        raise DatasetFormatError(f"the blended datasets were made with different tokenizers: {seen}")
    return values.pop()


def _blends_per_split(data_cfg) -> tuple[Optional[Blend], list]:
    per_split = [
        parse_blend(data_cfg.train_data_path, "data.train_data_path"),
        parse_blend(data_cfg.valid_data_path, "data.valid_data_path"),
        parse_blend(data_cfg.test_data_path, "data.test_data_path"),
    ]
    blend = parse_blend(data_cfg.data_path)
    if any(per_split):
        if blend is not None:
            raise BlendError("set either data.data_path (with data.split) or data.{train,valid,test}_data_path, not both")
        return None, per_split
    if blend is None:
        raise BlendError("no training data: set data.data_path, e.g. ['0.6', 'zh_text_document', '0.4', 'en_text_document']")
    return blend, []


_SPLIT_NAMES = ("train", "valid", "test")


def _drop_unread_splits(config, sizes) -> None:
    # A split nobody reads is not built: megatron loops forever on a split left with no documents.
    # Only the entry is dropped, so the other splits keep their document ranges.
    for i, size in enumerate(sizes):
        if not size:
            config.split_matrix[i] = None


def _check_split_ranges(blend: Blend, split_matrix, split: str) -> None:
    """Every read split of every dataset must get tokens (megatron would spin on an empty one)."""
    for prefix in blend.prefixes:
        lengths = IndexedDatasetReader(prefix).sequence_lengths
        n = len(lengths)
        for name, bounds in zip(_SPLIT_NAMES, split_matrix):
            if bounds is None:
                continue
            beg, end = int(round(bounds[0] * n)), int(round(bounds[1] * n))
            if int(lengths[beg:end].sum()) == 0:
                raise DatasetFormatError(
                    f"data.split={split!r} leaves the {name} split of {prefix} ({n} documents) with no tokens: "
                    "give it more documents or change data.split"
                )


def build_gpt_datasets(
    data_cfg,
    seq_length: int,
    seed: int,
    sizes: tuple[int, int, int],
    tokenizer=None,
    data_parallel_size: int = 1,
):
    """(train, valid, test) megatron-core datasets for a DataConfig; a split with size 0 is None.

    Call on every rank (megatron builds the index cache on rank 0 first, then the others read it).
    Items are dicts of tensors: tokens, labels, loss_mask, position_ids (and attention_mask when
    `data_cfg.reset_attention_mask` is on).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    blend, per_split = _blends_per_split(data_cfg)
    blends = [blend] if blend is not None else [b for b in per_split if b is not None]
    names = ["data.data_path"] if blend is not None else ["data.train_data_path", "data.valid_data_path", "data.test_data_path"]
    for b, name in zip(blends, names):
        check_prefixes(b, name)
    eod, vocab = eod_and_vocab(blends, tokenizer)
    cache = data_cfg.data_cache_path
    if cache:
        os.makedirs(cache, exist_ok=True)
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=blend.as_megatron() if blend is not None else None,
        blend_per_split=[b.as_megatron() if b is not None else None for b in per_split] if per_split else None,
        split=data_cfg.split if blend is not None else None,
        path_to_cache=cache,
        tokenizer=MegatronTokenizerView(eod, vocab),
        reset_position_ids=data_cfg.reset_position_ids,
        reset_attention_mask=data_cfg.reset_attention_mask,
        eod_mask_loss=data_cfg.eod_mask_loss,
        # A [1, s, s] mask per sample costs memory and time; only the document reset needs one.
        create_attention_mask=data_cfg.reset_attention_mask,
        data_parallel_size=data_parallel_size,
    )
    if blend is not None:
        _drop_unread_splits(config, sizes)
        _check_split_ranges(blend, config.split_matrix, data_cfg.split)
    # Sizes stay integers (0 for an unread split): megatron refuses a weighted blend of size None.
    datasets = BlendedMegatronDatasetBuilder(GPTDataset, [int(s) for s in sizes], lambda: True, config).build()
    return tuple(datasets)
