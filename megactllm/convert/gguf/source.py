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
from megactllm.convert.tokenizer_export import load_tokenizer_file
from megactllm.convert.hf_config import model_config_from_hf, read_hf_config
from megactllm.convert.safetensors_io import TensorSpec
from megactllm.tokenizer.bos import hf_bos_eos, sentencepiece_adds_bos


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
    # "sentencepiece" (tokenizer.model) or "huggingface" (a byte-level BPE tokenizer.json), and the
    # HF directory's tokenizer_config.json (names the bos/eos/pad tokens), where there is one.
    tokenizer_type: str = "sentencepiece"
    tokenizer_config: dict = field(default_factory=dict)


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
            raise ConversionError(f"{meta.path} holds no tokenizer; pass --tokenizer with the model's tokenizer.model "
                                  "or tokenizer.json")
        if tokenizer_file:
            tok_type = _tokenizer_type(tok)
            tok = tok / "tokenizer.json" if tok.is_dir() else tok
        if tok_type not in ("sentencepiece", "huggingface"):
            raise ConversionError(f"{meta.path}: tokenizer type {tok_type!r}; GGUF export supports SentencePiece and "
                                  "byte-level BPE (tokenizer.json) tokenizers")
        template, why = default_chat_template(load_tokenizer_file(tok_type, tok))
        tok_config = _config_beside(tok)
        # BOS as the original adds it: its tokenizer_config.json (copied by the import), or a
        # tokenizer.json's post-processor (Llama-3's); megactllm's own tokenizers add none.
        if tok_type == "sentencepiece":
            add_bos, add_eos = sentencepiece_adds_bos(tok), False
        else:
            add_bos, add_eos = hf_bos_eos(tok.with_name("tokenizer_config.json"), tok_config,
                                           json.loads(tok.read_text(encoding="utf-8")), bpe=True)
        yield ModelSource(
            path=meta.path, model=reader.model, dtype=reader.dtype, tokenizer_file=tok, chat_template=template,
            plan=hf_tensor_plan(reader.model, reader.dtype), tensors=lambda: hf_tensors(reader, reader.dtype), notes=[why],
            tokenizer_type=tok_type, tokenizer_config=tok_config, add_bos=add_bos, add_eos=add_eos,
        )


def _config_beside(tokenizer_file: Path) -> dict:
    """The tokenizer_config.json beside a tokenizer file (a checkpoint's copy has the original's since
    the import copies it; older copies and megactllm's own tokenizers have none)."""
    config = tokenizer_file.parent / "tokenizer_config.json"
    return json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}


def _tokenizer_type(path: Path) -> str:
    """A tokenizer.json (or a directory holding one) is a Hugging Face tokenizer; else SentencePiece."""
    return "huggingface" if path.suffix == ".json" or (path / "tokenizer.json").is_file() else "sentencepiece"


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
    if tokenizer_file:
        tok = Path(tokenizer_file)
        tok = tok / "tokenizer.json" if tok.is_dir() else tok
    else:  # SentencePiece where the directory has it (its tokenizer.json is derived from it), else BPE
        tok = path / "tokenizer.model" if (path / "tokenizer.model").is_file() else path / "tokenizer.json"
    if not tok.is_file():
        raise ConversionError(f"{tok} is missing: GGUF export needs the model's tokenizer (a SentencePiece "
                              "tokenizer.model or a byte-level BPE tokenizer.json) beside the HF model")
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
    tok_json_path = path / "tokenizer.json"
    tok_json = json.loads(tok_json_path.read_text(encoding="utf-8")) if tok_json_path.is_file() else None
    add_bos, add_eos = hf_bos_eos(config_path, tok_config, tok_json, bpe=tok.suffix == ".json")
    return ModelSource(
        path=path, model=model, dtype=dtype, tokenizer_file=tok, chat_template=_hf_chat_template(path, tok_config),
        plan=plan, tensors=tensors, added_tokens=_hf_added_tokens(path, tok_config), add_bos=add_bos, add_eos=add_eos,
        chat_space_prefix=_hf_space_after_special(tok_config, tok_json), tokenizer_type=_tokenizer_type(tok),
        tokenizer_config=tok_config,
    )


def _find(node, kind: str) -> Optional[dict]:
    """The first tokenizers component of type `kind` in a (possibly nested Sequence) component."""
    if isinstance(node, dict):
        if node.get("type") == kind:
            return node
        for child in node.get("normalizers") or node.get("pretokenizers") or []:
            found = _find(child, kind)
            if found:
                return found
    return None


def _hf_space_after_special(tok_config: dict, tok_json: Optional[dict]) -> bool:
    """Whether the HF tokenizer gives the text after a special token SentencePiece's "▁" prefix too
    (a Prepend normalizer, Metaspace prepend_scheme "always": transformers' legacy Llama) or only the
    start of the text (Metaspace "first": legacy=False and transformers 5)."""
    if tok_json is not None:
        if _find(tok_json.get("normalizer"), "Prepend"):
            return True
        metaspace = _find(tok_json.get("pre_tokenizer"), "Metaspace")
        if metaspace is not None:
            return metaspace.get("prepend_scheme", "always") == "always"
    return tok_config.get("legacy", True) is not False
