"""megactllm checkpoint (any TP/PP layout) -> Hugging Face directory of the model family's own class.

The ModelConfig comes from the checkpoint's own metadata. Tensors are read a layer at a time (the
embedding and output layer alone), split into HF tensors and streamed into size-bounded
safetensors shards (`max_shard_bytes`, 5 GiB by default as transformers, with the index file),
so memory stays near one layer or the embedding, whatever the depth.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, TextIO

import torch

from megactllm.config import ModelConfig
from megactllm.convert import layout
from megactllm.convert.atomic import atomic_output_dir
from megactllm.convert.errors import ConversionError
from megactllm.convert.hf_config import (
    dtype_from_name,
    generation_config,
    hf_config_from_model,
)
from megactllm.convert.megatron_reader import MegatronCheckpointReader
from megactllm.convert.process_group import single_process_group
from megactllm.convert.progress import ConversionProgress
from megactllm.convert.safetensors_io import ShardedSafetensorsWriter, TensorSpec
from megactllm.convert.tokenizer_export import export_tokenizer
from megactllm.model.families import family_of
from megactllm.tokenizer.bos import tokenizer_file_adds_bos
from megactllm.tokenizer.vocab_fit import check_tokenizer_fits
from megactllm.common.progress import STDERR

DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


@dataclass
class ExportResult:
    out_dir: Path
    files: list
    model_config: ModelConfig
    dtype: torch.dtype
    total_bytes: int


def hf_tensor_plan(model: ModelConfig, dtype: torch.dtype) -> list[TensorSpec]:
    """Every HF tensor, in the order export produces them (a layer at a time, as HF saves them)."""
    shapes = layout.Shapes(model)
    plan = [TensorSpec(layout.HF_EMBEDDING, shapes.vocab_rows(), dtype)]
    for i in range(model.num_layers):
        for names in layout.layer_tensors_at(model, i).values():
            plan += [TensorSpec(layout.hf_layer(i, n), shapes.hf_layer(n), dtype) for n in names]
    plan.append(TensorSpec(layout.HF_FINAL_NORM, (model.hidden_size,), dtype))
    if not model.tie_word_embeddings:
        plan.append(TensorSpec(layout.HF_LM_HEAD, shapes.vocab_rows(), dtype))
    return plan


def hf_tensors(reader: MegatronCheckpointReader, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) in hf_tensor_plan order; holds one layer (or the embedding) at a time."""
    model = reader.model
    yield layout.HF_EMBEDDING, reader.read(layout.EMBEDDING)[: model.vocab_size].to(dtype)
    for i in range(model.num_layers):
        entries = layout.layer_tensors_at(model, i)  # (key, expert or None) -> HF names
        tensors = reader.read_layer(list(dict.fromkeys(key for key, _ in entries)), i)
        for (key, expert), names in entries.items():
            tensor = tensors[key] if expert is None else tensors[key][expert]  # experts: [E, ...]
            for name, part in zip(names, layout.to_hf(key, tensor, model), strict=True):
                yield layout.hf_layer(i, name), part.to(dtype)
    yield layout.HF_FINAL_NORM, reader.read(layout.FINAL_NORM).to(dtype)
    if not model.tie_word_embeddings:
        yield layout.HF_LM_HEAD, reader.read(layout.OUTPUT_LAYER)[: model.vocab_size].to(dtype)


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def default_chat_template(tokenizer_type: str, tokenizer_file: Path) -> tuple[Optional[str], str]:
    """The template of the chat format the tokenizer carries (ChatML or Llama-3), else None; and why.

    It is the format SFT and DPO rendered with, so the exported model is prompted as it was trained.
    A base model whose tokenizer has neither format's tokens gets no template: rendered chats would
    split the markers into ordinary pieces the model never learned as turn boundaries.
    """
    from megactllm.tokenizer import load_tokenizer
    from megactllm.tokenizer.chat_formats import chat_format_of

    fmt = chat_format_of(load_tokenizer(tokenizer_type, str(tokenizer_file)), required=False)
    if fmt is None:
        return None, "no chat template: the tokenizer has neither ChatML's nor Llama-3's chat tokens (a base model)"
    return fmt.jinja, f"chat template: {fmt.name}"


def _own_tokenizer(meta, tokenizer_file: Path):
    """The checkpoint's copy of its tokenizer when another file is exported with it, else None."""
    import filecmp

    from megactllm.tokenizer import load_tokenizer

    own = meta.tokenizer_file
    if own is None or not own.is_file() or filecmp.cmp(own, tokenizer_file, shallow=False):
        return None
    return load_tokenizer(meta.tokenizer.get("type") or "sentencepiece", str(own))


def export_to_hf(
    checkpoint: str | Path,
    out_dir: str | Path,
    dtype: Optional[str] = None,
    tokenizer_file: Optional[str | Path] = None,
    tokenizer_type: Optional[str] = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    chat_template: Optional[str] = "default",
    add_bos_token: Optional[bool] = None,
    overwrite: bool = False,
    progress_stream: Optional[TextIO] = STDERR,
) -> ExportResult:
    """Convert `checkpoint` (an iteration dir, or a run dir with a latest pointer) into `out_dir`.

    The tokenizer is the one saved in the checkpoint unless `tokenizer_file` is given; it must fit
    the model's vocabulary (rows past its ids are padding, exported as they are: config vocab_size
    is the rows, as Qwen2.5's). chat_template="default" uses megactllm's chat format when the tokenizer
    has its special tokens; None leaves it out; any other string is used as the template.
    add_bos_token=None: what the checkpoint's tokenizer copy says (a LLaMA-2 original's true, a Llama-3
    tokenizer.json's post-processor adds BOS, else false).
    """
    with single_process_group():
        reader = MegatronCheckpointReader(checkpoint)
        model = reader.model
        meta = reader.metadata
        tokenizer_file = Path(tokenizer_file) if tokenizer_file else meta.tokenizer_file
        tokenizer_type = tokenizer_type or meta.tokenizer.get("type") or "sentencepiece"
        if tokenizer_file is None:
            raise ConversionError(
                f"{meta.path} holds no tokenizer (saved without tokenizer_path); pass --tokenizer with the "
                "tokenizer the model was trained with"
            )
        target_dtype = dtype_from_name(dtype) if dtype else reader.dtype
        plan = hf_tensor_plan(model, target_dtype)
        progress = ConversionProgress("export", sum(s.nbytes for s in plan), progress_stream)
        progress.message(f"{meta.path} -> {out_dir} ({family_of(model).num_parameters(model) / 1e6:.1f}M parameters, {target_dtype})")
        template = chat_template
        if chat_template == "default":
            template, why = default_chat_template(tokenizer_type, tokenizer_file)
            progress.message(why)
        with atomic_output_dir(out_dir, overwrite=overwrite) as staging:
            tokenizer = export_tokenizer(
                tokenizer_type,
                tokenizer_file,
                staging,
                chat_template=template,
                model_max_length=model.max_position_embeddings or model.seq_length,
                add_bos_token=(tokenizer_file_adds_bos(tokenizer_type, tokenizer_file) if add_bos_token is None
                               else add_bos_token),
            )
            check_tokenizer_fits(model, tokenizer, where=f"checkpoint {meta.path}",
                                 reference=_own_tokenizer(meta, tokenizer_file))
            writer = ShardedSafetensorsWriter(staging, plan, max_shard_bytes)
            for name, tensor in hf_tensors(reader, target_dtype):
                writer.write(name, tensor)
                progress.update(tensor.numel() * tensor.element_size(), name)
            files = writer.close()
            ids = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eod_id, pad_token_id=tokenizer.pad_id)
            _write_json(staging / "generation_config.json", generation_config(**ids))
            # Last, so a staging directory left by a crash is never loadable as a model.
            _write_json(staging / "config.json", hf_config_from_model(model, target_dtype, **ids))
        progress.message(f"wrote {len(files)} weight file(s) to {out_dir}")
    return ExportResult(Path(out_dir), [Path(out_dir) / f.name for f in files], model, target_dtype, progress.total_bytes)
