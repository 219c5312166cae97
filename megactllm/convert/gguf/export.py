"""Write a GGUF file for llama.cpp from a megactllm checkpoint or an HF LLaMA directory.

Float types (f32, f16, bf16) are written here with the `gguf` library, streaming one tensor at a
time (the header lists every tensor first, from the plan, so nothing is held back in memory); a
megactllm checkpoint is read a layer at a time (convert.export.hf_tensors), so memory is about
one layer whatever the depth. A killed export is redone by the next run (its partial file, named
by the dead process, is removed), never continued.
Quantized types (q8_0, q4_0, q4_k_m) are llama.cpp's: the float file is written first at the
source's own precision (lossless), then quantized by `llama_model_quantize`. The output appears
complete or not at all: everything goes to `<out>.partial-<pid>` and is renamed at the end.
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

import numpy as np
import torch

from megactllm.common.atomic import fsync_path
from megactllm.convert.errors import ConversionError, VocabMismatchError
from megactllm.convert.gguf.quantize import QUANT_TYPES, quantize_gguf
from megactllm.convert.gguf.bpe_vocab import read_bpe_vocab
from megactllm.convert.gguf.experts import stack_plan, stack_tensors
from megactllm.convert.gguf.source import ModelSource, open_source
from megactllm.convert.gguf.tensors import FLOAT_TYPES, check_runnable, gguf_name, to_gguf
from megactllm.convert.gguf.vocab import UNUSED, GGUFVocab, pad_vocab, read_sentencepiece_vocab
from megactllm.convert.progress import ConversionProgress
from megactllm.model.families import family_of
from megactllm.common.progress import STDERR

OUTTYPES = FLOAT_TYPES + tuple(QUANT_TYPES)
# llama.cpp's llama_ftype numbers for the float files (general.file_type).
_FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32}
_SOURCE_FLOAT = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


@dataclass
class GGUFExportResult:
    path: Path
    outtype: str
    vocab_size: int
    bytes_written: int
    seconds: float


def _write_metadata(writer, source: ModelSource, vocab: GGUFVocab, outtype: str) -> None:
    import gguf

    m = source.model
    writer.add_name(source.path.name)
    writer.add_file_type(_FILE_TYPES[outtype])
    writer.add_context_length(m.max_position_embeddings or m.seq_length)
    writer.add_embedding_length(m.hidden_size)
    writer.add_block_count(m.num_layers)
    writer.add_feed_forward_length(m.ffn_hidden_size)
    writer.add_head_count(m.num_attention_heads)
    writer.add_head_count_kv(m.num_kv_heads)
    writer.add_key_length(m.head_dim)
    writer.add_value_length(m.head_dim)
    writer.add_rope_dimension_count(m.head_dim)
    writer.add_rope_freq_base(float(m.rotary_base))
    writer.add_layer_norm_rms_eps(float(m.norm_epsilon))
    writer.add_vocab_size(len(vocab))
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for add, token_id in ((writer.add_bos_token_id, vocab.bos_id), (writer.add_eos_token_id, vocab.eos_id),
                          (writer.add_unk_token_id, vocab.unk_id), (writer.add_pad_token_id, vocab.pad_id),
                          (writer.add_eot_token_id, vocab.eot_id)):
        if token_id is not None:
            add(token_id)
    # What the model's own tokenizer adds (megactllm's: nothing; an HF model: its tokenizer_config.json).
    writer.add_add_bos_token(source.add_bos)
    writer.add_add_eos_token(source.add_eos)
    # Plain text as SentencePiece/HF tokenize it; how chat prompts differ: see vocab.py.
    writer.add_add_space_prefix(vocab.dummy_prefix)
    writer.add_bool("megactllm.tokenizer.chat_space_prefix", vocab.dummy_prefix and source.chat_space_prefix)
    # The embedding's padding rows (pad_vocab's placeholders) start here: megactllm.serve never samples them.
    writer.add_uint32("megactllm.tokenizer.padding_start", _padding_start(vocab))
    if source.chat_template:
        writer.add_chat_template(source.chat_template)
    family_of(m).gguf_metadata(m, writer)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _padding_start(vocab: GGUFVocab) -> int:
    start = len(vocab)
    while start > 0 and vocab.types[start - 1] == UNUSED and vocab.tokens[start - 1] == f"[PAD{start - 1}]":
        start -= 1
    return start


def _plan(source: ModelSource):
    """The source's tensors in writing order; an MoE model's experts stacked per layer, as llama.cpp keeps them."""
    return stack_plan(source.plan) if source.model.is_moe else source.plan


def _planned_tensors(source: ModelSource, outtype: str):
    """(GGUF name, numpy shape, numpy dtype, nbytes, raw type) of every tensor, before reading any."""
    import gguf

    for spec in _plan(source):
        floats = len(spec.shape) == 1 or outtype == "f32"
        dtype = np.float32 if floats else (np.float16 if outtype == "f16" else np.int16)
        raw = None if floats or outtype == "f16" else gguf.GGMLQuantizationType.BF16
        nbytes = int(np.prod(spec.shape)) * np.dtype(dtype).itemsize
        yield gguf_name(spec.name, source.model), tuple(spec.shape), dtype, nbytes, raw
    for name, tensor in family_of(source.model).gguf_extra_tensors(source.model).items():
        yield name, tuple(tensor.shape), np.float32, tensor.numel() * 4, None


def _vocab_for(source: ModelSource) -> GGUFVocab:
    if source.tokenizer_type == "huggingface":
        vocab = read_bpe_vocab(source.tokenizer_file, source.tokenizer_config)
    else:
        vocab = read_sentencepiece_vocab(source.tokenizer_file, source.added_tokens)
    rows = source.model.vocab_size
    if len(vocab) > rows:
        raise VocabMismatchError(
            f"tokenizer {source.tokenizer_file} has {len(vocab)} tokens but {source.path} has {rows} embedding rows; "
            "use the tokenizer the model was trained with"
        )
    pad_vocab(vocab, rows)
    return vocab


def write_float_gguf(source: ModelSource, out: Path, outtype: str, progress: ConversionProgress) -> GGUFVocab:
    import gguf

    vocab = _vocab_for(source)
    writer = gguf.GGUFWriter(str(out), family_of(source.model).gguf_architecture)
    _write_metadata(writer, source, vocab, outtype)
    for name, shape, dtype, nbytes, raw in _planned_tensors(source, outtype):
        writer.add_tensor_info(name, shape, np.dtype(dtype), nbytes, raw_dtype=raw)
    writer.write_header_to_file(out)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    tensors = stack_tensors(source.tensors()) if source.model.is_moe else source.tensors()
    for hf_name, tensor in tensors:
        _, array, _ = to_gguf(hf_name, tensor, source.model, outtype)
        writer.write_tensor_data(array)
        progress.update(array.nbytes, hf_name)
    for name, tensor in family_of(source.model).gguf_extra_tensors(source.model).items():
        writer.write_tensor_data(tensor.to(torch.float32).contiguous().numpy())
        progress.update(tensor.numel() * 4, name)
    writer.close()
    return vocab


def _pid_alive(text: str) -> bool:
    try:
        os.kill(int(text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def export_gguf(
    src: str | Path,
    out: str | Path,
    outtype: str = "f16",
    tokenizer_file: Optional[str | Path] = None,
    overwrite: bool = False,
    threads: int = 0,
    progress_stream: Optional[TextIO] = STDERR,
) -> GGUFExportResult:
    """Export `src` (megactllm checkpoint or HF LLaMA directory) to the GGUF file `out`."""
    import time

    start = time.monotonic()
    if outtype not in OUTTYPES:
        raise ConversionError(f"outtype {outtype!r} is not supported; use one of {list(OUTTYPES)}")
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise ConversionError(f"{out} already exists; choose another output file or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f"{out.name}.partial-*"):  # left by a killed export: redone, not continued
        if not _pid_alive(stale.name.rsplit("-", 1)[1]):
            stale.unlink(missing_ok=True)
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    with open_source(src, tokenizer_file) as source:
        check_runnable(source.model, str(source.path))
        float_type = outtype if outtype in FLOAT_TYPES else _SOURCE_FLOAT.get(source.dtype, "f32")
        progress = ConversionProgress("gguf", sum(n for *_, n, _ in _planned_tensors(source, float_type)), progress_stream)
        progress.message(f"{source.path} -> {out} ({family_of(source.model).num_parameters(source.model) / 1e6:.1f}M parameters, {outtype})")
        for note in source.notes:
            progress.message(note)
        try:
            if outtype in FLOAT_TYPES:
                vocab = write_float_gguf(source, partial, outtype, progress)
            else:
                with tempfile.TemporaryDirectory(prefix="megactllm-gguf-", dir=out.parent) as tmp:
                    staged = Path(tmp) / f"model-{float_type}.gguf"
                    vocab = write_float_gguf(source, staged, float_type, progress)
                    progress.message(f"quantizing to {outtype} with llama.cpp")
                    quantize_gguf(staged, partial, outtype, threads)
            fsync_path(partial)
            os.replace(partial, out)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    seconds = time.monotonic() - start
    size = out.stat().st_size
    progress.message(f"wrote {out} ({size / 2**20:.1f} MiB, {seconds:.1f}s)")
    return GGUFExportResult(out, outtype, len(vocab), size, seconds)
