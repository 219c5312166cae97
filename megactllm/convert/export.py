"""megactllm checkpoint (any TP/PP layout) -> Hugging Face directory of the model family's own class.

The ModelConfig comes from the checkpoint's own metadata. Tensors are read a layer at a time (the
embedding and output layer alone), split into HF tensors and streamed into size-bounded
safetensors shards (`max_shard_bytes`, 5 GiB by default as transformers, with the index file),
so memory stays near one layer or the embedding, whatever the depth.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, TextIO

import torch

from megactllm.config import ModelConfig
from megactllm.convert import layout
from megactllm.convert.atomic import file_fingerprint, resumable_output_dir
from megactllm.convert.errors import ConversionError
from megactllm.convert.hf_config import (
    dtype_from_name,
    generation_config,
    hf_config_from_model,
)
from megactllm.convert.megatron_reader import MegatronCheckpointReader
from megactllm.convert.process_group import single_process_group
from megactllm.convert.progress import ConversionProgress
from megactllm.convert.safetensors_io import PlannedSafetensorsFiles, TensorSpec
from megactllm.convert.tokenizer_export import export_tokenizer, load_tokenizer_file
from megactllm.model.families import family_of
from megactllm.model.families.moe import GATE_UP_KEYS
from megactllm.tokenizer.bos import tokenizer_file_adds_bos
from megactllm.tokenizer.vocab_fit import check_tokenizer_fits
from megactllm.common.atomic import write_text_atomic
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


def export_groups(model: ModelConfig) -> list[str]:
    """The units export writes (and resumes) one at a time: the embedding, each layer, the head."""
    return ["embedding", *[f"layer{i:06d}" for i in range(model.num_layers)], "head"]


def hf_group_tensors(reader: MegatronCheckpointReader, group: str, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) of one group, in hf_tensor_plan order; holds that group only."""
    model = reader.model
    if group == "embedding":
        yield layout.HF_EMBEDDING, reader.read(layout.EMBEDDING)[: model.vocab_size].to(dtype)
    elif group == "head":
        yield layout.HF_FINAL_NORM, reader.read(layout.FINAL_NORM).to(dtype)
        if not model.tie_word_embeddings:
            yield layout.HF_LM_HEAD, reader.read(layout.OUTPUT_LAYER)[: model.vocab_size].to(dtype)
    else:
        i = int(group[len("layer"):])
        for (key, expert), names in layout.layer_tensors_at(model, i).items():  # (key, expert or None) -> HF names
            for name, part in zip(names, _hf_parts(reader, key, i, expert), strict=True):
                yield layout.hf_layer(i, name), part.to(dtype)


def _hf_parts(reader: MegatronCheckpointReader, key: str, layer: int, expert) -> tuple[torch.Tensor, ...]:
    """The HF tensors of one megatron tensor of a layer (of one expert: experts lie on the first axis).
    A fused gate/up projection is read as its two halves, which is how megatron-core stores them:
    each is then a view of the checkpoint's file, and the fused tensor is never assembled."""
    def region(offsets: tuple, sizes: tuple) -> torch.Tensor:
        if expert is None:
            return reader.read_layer_region(key, layer, offsets, sizes)
        return reader.read_layer_region(key, layer, (expert, *offsets), (1, *sizes))[0]

    if key in GATE_UP_KEYS:
        half = layout.Shapes(reader.model).megatron_layer(key)[0] // 2
        return region((0,), (half,)), region((half,), (half,))
    return layout.to_hf(key, region((), ()), reader.model)


def hf_tensors(reader: MegatronCheckpointReader, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) in hf_tensor_plan order; holds one layer (or the embedding) at a time."""
    for group in export_groups(reader.model):
        yield from hf_group_tensors(reader, group, dtype)


@dataclass
class _ExportJob:
    """What a process exporting groups needs (picklable: sent to the worker processes)."""

    checkpoint: Path
    out_dir: Path
    dtype: torch.dtype
    max_shard_bytes: int
    done_dir: Path


def _export_groups(job: _ExportJob, groups: list[str], reader: MegatronCheckpointReader, progress=None) -> None:
    """Write `groups` into the planned shards at their offsets. A group is marked done by a thread
    beside the writing one, after fsyncing the shards it wrote to (the disk overlaps the next group's
    work): a crashed machine's rerun never keeps a group whose bytes did not reach the disk."""
    import concurrent.futures

    def seal(shards: set, group: str) -> None:
        files.sync(shards)
        write_text_atomic(job.done_dir / group, "", fsync=False)

    files = PlannedSafetensorsFiles(job.out_dir, hf_tensor_plan(reader.model, job.dtype), job.max_shard_bytes)
    try:
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="seal-group") as sealer:
            sealing = []
            for group in groups:
                shards = set()
                for name, tensor in hf_group_tensors(reader, group, job.dtype):
                    shards.add(files.write(name, tensor))
                    if progress is not None:
                        progress.update(tensor.numel() * tensor.element_size(), name)
                sealing.append(sealer.submit(seal, shards, group))
            for future in sealing:
                future.result()
    finally:
        files.close()


def _worker_setup(job: _ExportJob, stack):
    """In a --workers process, once: its process group and checkpoint reader (convert.workers)."""
    stack.enter_context(single_process_group())
    reader = MegatronCheckpointReader(job.checkpoint, checksums="skip")  # the parent checks them
    return lambda group: _export_groups(job, [group], reader)


def _group_of(hf_name: str) -> str:
    if hf_name == layout.HF_EMBEDDING:
        return "embedding"
    if hf_name.startswith("model.layers."):
        return f"layer{int(hf_name.split('.')[2]):06d}"
    return "head"


def _run_export_groups(job: _ExportJob, reader, workers: int, progress: ConversionProgress) -> None:
    groups = export_groups(reader.model)
    # The largest first: the last group's sealing (fsync) is the one nothing overlaps.
    todo = sorted((g for g in groups if not (job.done_dir / g).exists()), key=lambda g: not g.startswith(("embedding", "head")))
    group_bytes = dict.fromkeys(groups, 0)
    for spec in hf_tensor_plan(reader.model, job.dtype):
        group_bytes[_group_of(spec.name)] += spec.nbytes
    if len(todo) < len(groups):
        progress.message(f"resuming: {len(groups) - len(todo)} of {len(groups)} groups were written by an earlier run")
        progress.update(sum(group_bytes[g] for g in groups if g not in todo), "earlier run")
    if workers <= 1 or len(todo) <= 1:
        _export_groups(job, todo, reader, progress)
        return
    from megactllm.convert.workers import convert_in_workers

    convert_in_workers(_worker_setup, job, todo, min(workers, len(todo)),
                       lambda group: progress.update(group_bytes[group], group))


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def default_chat_template(tokenizer) -> tuple[Optional[str], str]:
    """The template of the chat format the tokenizer carries (ChatML or Llama-3), else None; and why.

    It is the format SFT and DPO rendered with, so the exported model is prompted as it was trained.
    A base model whose tokenizer has neither format's tokens gets no template: rendered chats would
    split the markers into ordinary pieces the model never learned as turn boundaries.
    """
    from megactllm.tokenizer.chat_formats import chat_format_of

    fmt = chat_format_of(tokenizer, required=False)
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
    workers: int = 1,
) -> ExportResult:
    """Convert `checkpoint` (an iteration dir, or a run dir with a latest pointer) into `out_dir`.

    The tokenizer is the one saved in the checkpoint unless `tokenizer_file` is given; it must fit
    the model's vocabulary (rows past its ids are padding, exported as they are: config vocab_size
    is the rows, as Qwen2.5's). chat_template="default" uses megactllm's chat format when the tokenizer
    has its special tokens; None leaves it out; any other string is used as the template.
    add_bos_token=None: what the checkpoint's tokenizer copy says (a LLaMA-2 original's true, a Llama-3
    tokenizer.json's post-processor adds BOS, else false).
    `workers` processes write layers in parallel; a killed export rerun with the same arguments
    keeps the layers already written.
    """
    if workers < 1:
        raise ConversionError(f"workers={workers}: give at least 1")
    with single_process_group():
        reader = MegatronCheckpointReader(checkpoint, checksums="background")
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
        ours = load_tokenizer_file(tokenizer_type, tokenizer_file)  # once: a 152k vocabulary takes a while
        template = chat_template
        if chat_template == "default":
            template, why = default_chat_template(ours)
            progress.message(why)
        fingerprint = {"kind": "export", "format": 2, "dtype": str(target_dtype), "max_shard_bytes": max_shard_bytes,
                       "inputs": file_fingerprint(p for p in (meta.path / "model").iterdir() if p.is_file()),
                       "checkpoint": str(meta.path.absolute())}
        with resumable_output_dir(out_dir, fingerprint, overwrite=overwrite) as (staging, _resumed):
            tokenizer = export_tokenizer(
                tokenizer_type,
                tokenizer_file,
                staging,
                chat_template=template,
                model_max_length=model.max_position_embeddings or model.seq_length,
                add_bos_token=(tokenizer_file_adds_bos(tokenizer_type, tokenizer_file) if add_bos_token is None
                               else add_bos_token),
                tokenizer=ours,
            )
            check_tokenizer_fits(model, tokenizer, where=f"checkpoint {meta.path}",
                                 reference=_own_tokenizer(meta, tokenizer_file))
            job = _ExportJob(meta.path.absolute(), staging, target_dtype, max_shard_bytes, staging / ".groups")
            job.done_dir.mkdir(exist_ok=True)
            files = PlannedSafetensorsFiles(staging, plan, max_shard_bytes)
            files.create()
            _run_export_groups(job, reader, workers, progress)
            reader.finish_verification()  # what was read is what was saved, before anything appears
            files.sync_all()  # each group's shards were synced as it was sealed: this finds little to do
            files = files.write_index()
            shutil.rmtree(job.done_dir)
            ids = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eod_id, pad_token_id=tokenizer.pad_id)
            _write_json(staging / "generation_config.json", generation_config(**ids))
            # Last, so a staging directory left by a crash is never loadable as a model.
            _write_json(staging / "config.json", hf_config_from_model(model, target_dtype, **ids))
        progress.message(f"wrote {len(files)} weight file(s) to {out_dir}")
    return ExportResult(Path(out_dir), [Path(out_dir) / f.name for f in files], model, target_dtype, progress.total_bytes)
