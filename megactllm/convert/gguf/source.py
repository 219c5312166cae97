"""Where GGUF export reads a model from: a megactllm checkpoint (any TP/PP layout) or an HF LLaMA dir.

Both give the same thing: the ModelConfig, the SentencePiece tokenizer file (plus tokens added on
top of it), the chat template, what the tokenizer adds around a text (BOS/EOS; whether text after a
special token gets the dummy-prefix space), and the weights as (HF LLaMA name, tensor) pairs streamed one at a
time in a known plan, so memory stays near one tensor stack, never the whole model.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from megactllm.config import ModelConfig
from megactllm.convert.errors import ConversionError
from megactllm.convert.export import default_chat_template, hf_tensor_plan, hf_tensors
from megactllm.convert.hf_config import model_config_from_hf, read_hf_config
from megactllm.convert.safetensors_io import TensorSpec


@dataclass
class ModelSource:
    path: Path
    model: ModelConfig
    dtype: torch.dtype
    tokenizer_file: Path
    chat_template: Optional[str]
    plan: list[TensorSpec]
    tensors: Callable[[], Iterator[tuple[str, torch.Tensor]]]
    added_tokens: list[tuple[int, str, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # What the model's tokenizer does: megactllm's adds no BOS/EOS (documents end in EOD) and puts
    # SentencePiece's dummy prefix only at the start of a text, not after each special token.
    add_bos: bool = False
    add_eos: bool = False
    chat_space_prefix: bool = False


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


@contextlib.contextmanager
def open_source(path: str | Path, tokenizer_file: Optional[str | Path] = None):
    """Yield the ModelSource of `path` (valid only inside the with-block)."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path} does not exist: pass a megactllm checkpoint or a Hugging Face LLaMA directory")
    if is_hf_dir(path):
        yield _hf_source(path, tokenizer_file)
        return
    from megactllm.convert.megatron_reader import MegatronCheckpointReader
    from megactllm.convert.process_group import single_process_group

    with single_process_group():
        reader = MegatronCheckpointReader(path)
        meta = reader.metadata
        tok = Path(tokenizer_file) if tokenizer_file else meta.tokenizer_file
        tok_type = meta.tokenizer.get("type") or "sentencepiece"
        if tok is None:
            raise ConversionError(f"{meta.path} holds no tokenizer; pass --tokenizer with the model's tokenizer.model")
        if tok_type != "sentencepiece":
            raise ConversionError(f"{meta.path}: tokenizer type {tok_type!r}; GGUF export supports SentencePiece tokenizers")
        template, why = default_chat_template(tok_type, tok)
        yield ModelSource(
            path=meta.path, model=reader.model, dtype=reader.dtype, tokenizer_file=tok, chat_template=template,
            plan=hf_tensor_plan(reader.model, reader.dtype), tensors=lambda: hf_tensors(reader, reader.dtype), notes=[why],
        )


def _hf_chat_template(path: Path, tok_config: dict) -> Optional[str]:
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    return template


def _hf_added_tokens(path: Path, tok_config: dict) -> list[tuple[int, str, bool]]:
    """(id, content, special) of HF added tokens: tokenizer_config.json lists them (small to read);
    tokenizer.json only where the config does not."""
    decoder = tok_config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        return [(int(i), t["content"], bool(t.get("special"))) for i, t in decoder.items()]
    tok_json = path / "tokenizer.json"
    if not tok_json.is_file():
        return []
    data = json.loads(tok_json.read_text(encoding="utf-8"))
    return [(int(t["id"]), t["content"], bool(t.get("special"))) for t in data.get("added_tokens", [])]


def _hf_weight_files(path: Path) -> dict[str, Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    single = path / "model.safetensors"
    if not single.is_file():
        raise ConversionError(f"{path} has no model.safetensors or model.safetensors.index.json (only safetensors are read)")
    from safetensors import safe_open

    with safe_open(str(single), "pt") as f:
        return {name: single for name in f.keys()}


def _hf_source(path: Path, tokenizer_file: Optional[str | Path]) -> ModelSource:
    model = model_config_from_hf(read_hf_config(path), str(path / "config.json"))
    tok = Path(tokenizer_file) if tokenizer_file else path / "tokenizer.model"
    if not tok.is_file():
        raise ConversionError(f"{tok} is missing: GGUF export needs the SentencePiece tokenizer.model beside the HF model")
    files = _hf_weight_files(path)
    from safetensors import safe_open

    first = files.get("model.embed_tokens.weight")
    if first is None:
        raise ConversionError(f"{path}: no model.embed_tokens.weight in its safetensors: not a LLaMA model")
    with safe_open(str(first), "pt") as f:
        dtype = f.get_slice("model.embed_tokens.weight").get_dtype()
    dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}.get(dtype, torch.float32)
    plan = hf_tensor_plan(model, dtype)
    missing = [s.name for s in plan if s.name not in files]
    if missing:
        raise ConversionError(f"{path}: tensors {missing[:3]} (and {max(len(missing) - 3, 0)} more) are missing from its safetensors")

    def tensors():
        handles = {}
        try:
            for spec in plan:
                file = files[spec.name]
                if file not in handles:
                    handles[file] = safe_open(str(file), "pt")
                tensor = handles[file].get_tensor(spec.name)
                if tuple(tensor.shape) != tuple(spec.shape):
                    raise ConversionError(f"{file}: {spec.name} is {tuple(tensor.shape)}, config.json implies {tuple(spec.shape)}")
                yield spec.name, tensor
        finally:
            handles.clear()

    config_path = path / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    add_bos, add_eos = _hf_bos_eos(config_path, tok_config)
    return ModelSource(
        path=path, model=model, dtype=dtype, tokenizer_file=tok, chat_template=_hf_chat_template(path, tok_config),
        plan=plan, tensors=tensors, added_tokens=_hf_added_tokens(path, tok_config), add_bos=add_bos, add_eos=add_eos,
        # transformers' LlamaTokenizer: legacy (the default) encodes each text between special tokens
        # as its own SentencePiece text, dummy prefix included; legacy=False only at the start.
        chat_space_prefix=tok_config.get("legacy", True) is not False,
    )


def _hf_bos_eos(config_path: Path, tok_config: dict) -> tuple[bool, bool]:
    """(add_bos_token, add_eos_token) as the model's tokenizer_config.json says; where it is silent,
    transformers' LlamaTokenizer defaults (BOS, no EOS)."""
    values = []
    for key, default in (("add_bos_token", True), ("add_eos_token", False)):
        value = tok_config.get(key, default)
        if not isinstance(value, bool):
            raise ConversionError(f"{config_path}: {key} is {value!r}; expected true or false")
        values.append(value)
    return values[0], values[1]
