"""Hugging Face directory (LLaMA, Qwen2, Qwen3, Mistral families) -> megactllm checkpoint that megactllm.train can start from.

The result is an ordinary megactllm checkpoint (iteration 0, no optimizer state): point
`train.pretrained_checkpoint` at it to continue pretraining with a fresh optimizer and schedule.
The model is built once on CPU (local spec, no initialisation) at TP1/PP1 and filled tensor by
tensor from the safetensors files; dist_checkpointing stores global tensors, so it loads at any
TP/PP (megatron loads the padded vocabulary rows with `allow_shape_mismatch`, so even the
padding, which depends on TP, adapts). `target_tp`/`target_pp` are checked against the model's
shape up front, so a layout the model cannot be split into fails here and not at training start.

Given a tokenizer that extends the model's own (`tokenizer_file` with more ids), the embedding and
output rows of the new pieces are initialised from their old sub-tokens (see convert.vocab).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TextIO

import torch

from megactllm.config import (
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    TrainConfig,
)
from megactllm.convert import layout
from megactllm.convert.atomic import atomic_output_dir
from megactllm.convert.errors import ConversionError
from megactllm.convert.hf_config import (
    dtype_from_name,
    model_config_from_hf,
    read_hf_config,
)
from megactllm.convert.process_group import single_process_group
from megactllm.convert.progress import ConversionProgress
from megactllm.convert.safetensors_io import SafetensorsCheckpoint
from megactllm.model.families import family_of
from megactllm.tokenizer.vocab_fit import (
    ExtensionReport,
    check_tokenizer_fits,
    fit_rows,
    rows_after_extension,
    plan_extension,
)
from megactllm.tokenizer import load_tokenizer
from megactllm.tokenizer.bos import hf_dir_adds_bos
from megactllm.common.progress import STDERR


@dataclass
class ImportResult:
    checkpoint: Path  # the iteration directory, for train.pretrained_checkpoint
    model_config: ModelConfig
    dtype: torch.dtype
    extension: Optional[ExtensionReport]


def find_hf_tokenizer(hf_dir: Path) -> tuple[Optional[str], Optional[Path]]:
    """(type, file) of the tokenizer an HF directory ships: the SentencePiece model if present."""
    if (hf_dir / "tokenizer.model").is_file():
        return "sentencepiece", hf_dir / "tokenizer.model"
    if (hf_dir / "tokenizer.json").is_file():
        return "huggingface", hf_dir / "tokenizer.json"
    return None, None


@dataclass
class _TokenizerPlan:
    type: str
    file: Path
    subtokens: Optional[list]  # per new piece, its old sub-token ids (vocabulary extension only)
    extension: Optional[ExtensionReport]


def _plan_tokenizer(hf_dir: Path, model: ModelConfig, tokenizer_file, tokenizer_type) -> tuple[ModelConfig, _TokenizerPlan]:
    """The tokenizer to train with (the HF directory's, or a given one) checked against the model.

    A given tokenizer larger than the model's vocabulary must extend the directory's own tokenizer;
    the model's vocabulary then grows to it (returned ModelConfig).
    """
    where = str(hf_dir / "config.json")
    base_type, base_file = find_hf_tokenizer(hf_dir)
    tok_type = tokenizer_type or base_type or "sentencepiece"
    tok_file = Path(tokenizer_file) if tokenizer_file else base_file
    if tok_file is not None and tok_file.is_dir():
        # A tokenizer directory (what `train-tokenizer extend` writes): the file it ships.
        dir_type, dir_file = find_hf_tokenizer(tok_file)
        if dir_file is None:
            raise ConversionError(f"--tokenizer {tok_file} is a directory without tokenizer.model or tokenizer.json")
        tok_type, tok_file = tokenizer_type or dir_type, dir_file
    if tok_file is None:
        raise ConversionError(f"{hf_dir} has no tokenizer.model or tokenizer.json; pass --tokenizer")
    tokenizer = load_tokenizer(tok_type, str(tok_file))
    base = load_tokenizer(base_type, str(base_file)) if base_file is not None and base_file != tok_file else None
    subtokens, extension = None, None
    if base is not None and tokenizer.vocab_size > base.vocab_size:
        check_tokenizer_fits(model, base, where=where)
        # New ids take the padding rows first (Qwen2.5: 271 of them), then the rows grow.
        subtokens, extension = plan_extension(base, tokenizer)
        rows = rows_after_extension(model.vocab_size, base.vocab_size, tokenizer.vocab_size)
        model = dataclasses.replace(model, vocab_size=rows)
    # Rows past the tokenizer's ids are padding (Qwen2.5 ships them): imported as they are.
    check_tokenizer_fits(model, tokenizer, where=where, reference=base)
    return model, _TokenizerPlan(tok_type, tok_file, subtokens, extension)


def check_target_layout(model: ModelConfig, tp: int, pp: int, where: str) -> None:
    problems = []
    if model.num_attention_heads % tp or model.num_kv_heads % tp:
        problems.append(f"{model.num_attention_heads} heads / {model.num_kv_heads} key-value heads over TP={tp}")
    if model.ffn_hidden_size % tp:
        problems.append(f"ffn_hidden_size {model.ffn_hidden_size} over TP={tp}")
    if model.num_layers % pp:
        problems.append(f"{model.num_layers} layers over PP={pp}")
    if problems:
        raise ConversionError(f"{where}: the model cannot be split for the target layout: " + "; ".join(problems))


def check_hf_tensors(weights: SafetensorsCheckpoint, model: ModelConfig) -> None:
    """Every tensor the family's HF class needs is present with its shape, before any work starts."""
    shapes = layout.Shapes(model)
    expected = {layout.HF_EMBEDDING: shapes.vocab_rows(), layout.HF_FINAL_NORM: (model.hidden_size,)}
    if not model.tie_word_embeddings:
        expected[layout.HF_LM_HEAD] = shapes.vocab_rows()
    for names in layout.layer_tensors(model).values():
        for i in range(model.num_layers):
            expected.update({layout.hf_layer(i, n): shapes.hf_layer(n) for n in names})
    for name, shape in expected.items():
        spec = weights.spec(name)  # raises, naming the directory, when absent
        if tuple(spec.shape) != tuple(shape):
            raise ConversionError(
                f"{weights.entries[name].file}: {name} is {tuple(spec.shape)} but config.json implies {tuple(shape)}"
            )


# Parameter names inside one layer of either spec -> the checkpoint key they are saved under
# (the local spec keeps its norms as separate modules; TE fuses them into the next linear layer,
# and the local spec saves them under TE's names).
_LOCAL_SPEC_LAYER_KEYS = {
    "self_attention.linear_qkv.weight": layout.QKV,
    "self_attention.linear_proj.weight": layout.PROJ,
    "mlp.linear_fc1.weight": layout.FC1,
    "mlp.linear_fc2.weight": layout.FC2,
    "input_layernorm.weight": layout.INPUT_NORM,
    "pre_mlp_layernorm.weight": layout.PRE_MLP_NORM,
    "self_attention.linear_qkv.bias": layout.QKV_BIAS,
    "self_attention.q_layernorm.weight": layout.Q_NORM,
    "self_attention.k_layernorm.weight": layout.K_NORM,
}
_TE_SPEC_LAYER_KEYS = {
    **{k: v for k, v in _LOCAL_SPEC_LAYER_KEYS.items() if "layernorm" not in k},
    "self_attention.linear_qkv.layer_norm_weight": layout.INPUT_NORM,
    "mlp.linear_fc1.layer_norm_weight": layout.PRE_MLP_NORM,
}
_LAYER_KEYS = {**_LOCAL_SPEC_LAYER_KEYS, **_TE_SPEC_LAYER_KEYS}
SPECS = ("local", "te")


class _Filler:
    """Fills a GPTModel built at TP1/PP1 (local spec) from HF tensors, one parameter at a time."""

    def __init__(self, weights: SafetensorsCheckpoint, model: ModelConfig, padded_vocab: int,
                 vocab_rows: Callable[[str], torch.Tensor], progress: ConversionProgress):
        self.weights, self.model, self.padded_vocab = weights, model, padded_vocab
        self.vocab_rows = vocab_rows
        self.progress = progress
        self.layer_tensors = layout.layer_tensors(model)

    def _layer_tensor(self, i: int, key: str) -> torch.Tensor:
        parts = [self.weights.read(layout.hf_layer(i, n)) for n in self.layer_tensors[key]]
        return layout.to_megatron(key, parts, self.model)

    def tensor_for(self, param_name: str) -> torch.Tensor:
        if param_name == "embedding.word_embeddings.weight":
            return layout.pad_vocab(self.vocab_rows(layout.HF_EMBEDDING), self.padded_vocab)
        if param_name == "output_layer.weight":
            return layout.pad_vocab(self.vocab_rows(layout.HF_LM_HEAD), self.padded_vocab)
        if param_name == "decoder.final_layernorm.weight":
            return self.weights.read(layout.HF_FINAL_NORM)
        if param_name.startswith("decoder.layers."):
            _, _, index, rest = param_name.split(".", 3)
            if rest in _LAYER_KEYS and _LAYER_KEYS[rest] in self.layer_tensors:
                return self._layer_tensor(int(index), _LAYER_KEYS[rest])
        raise ConversionError(f"megatron parameter {param_name} has no Hugging Face source (unsupported model part)")

    def fill(self, chunk) -> None:
        with torch.no_grad():
            for name, param in chunk.named_parameters():
                source = self.tensor_for(name)
                if tuple(source.shape) != tuple(param.shape):
                    raise ConversionError(f"{name}: HF gives {tuple(source.shape)}, the model has {tuple(param.shape)}")
                param.copy_(source)
                self.progress.update(source.numel() * source.element_size(), name)


def _build_empty_model(model: ModelConfig, dtype: torch.dtype, spec: str = "local"):
    """One GPTModel chunk at TP1/PP1 with uninitialised weights (they are all overwritten).

    The local spec on CPU by default; "te" builds Transformer Engine's modules (needs TE and a
    GPU) so the checkpoint also carries TE's extra state. Either loads into either spec.
    """
    from megactllm.model import (
        build_model_chunk,
        build_transformer_config,
        layer_spec,
        transformer_engine_available,
    )
    from megactllm.parallel import initialize_parallel

    if spec not in SPECS:
        raise ConversionError(f"layer spec {spec!r}: choose one of {SPECS}")
    if spec == "te" and not transformer_engine_available():
        raise ConversionError("spec 'te' needs Transformer Engine on a CUDA machine; the local spec's checkpoint loads into TE too")

    parallel = ParallelConfig()
    initialize_parallel(parallel, seed=0, num_layers=model.num_layers)
    optim = OptimConfig(bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16)
    config = build_transformer_config(model, parallel, optim)
    config.use_cpu_initialization = True
    config.perform_initialization = False  # random init of billions of weights would only be overwritten
    if spec == "te":
        config.use_cpu_initialization = False
        return build_model_chunk(model, config, spec=layer_spec(use_transformer_engine=True)).cuda()
    return build_model_chunk(model, config, spec=layer_spec(use_transformer_engine=False))


def import_from_hf(
    hf_dir: str | Path,
    out_dir: str | Path,
    target_tp: int = 1,
    target_pp: int = 1,
    dtype: Optional[str] = None,
    tokenizer_file: Optional[str | Path] = None,
    tokenizer_type: Optional[str] = None,
    overwrite: bool = False,
    progress_stream: Optional[TextIO] = STDERR,
    spec: str = "local",
) -> ImportResult:
    """Convert an HF directory of a supported family into a megactllm checkpoint run directory `out_dir`."""
    from megactllm.checkpoint import Checkpointer, iteration_dir

    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    model = model_config_from_hf(read_hf_config(hf_dir), str(config_path))
    check_target_layout(model, target_tp, target_pp, str(config_path))
    weights = SafetensorsCheckpoint(hf_dir)
    check_hf_tensors(weights, model)

    model, tokenizer_plan = _plan_tokenizer(hf_dir, model, tokenizer_file, tokenizer_type)
    subtokens, extension = tokenizer_plan.subtokens, tokenizer_plan.extension

    target_dtype = dtype_from_name(dtype) if dtype else weights.spec(layout.HF_EMBEDDING).dtype

    def vocab_rows(name: str) -> torch.Tensor:
        rows = weights.read(name)
        if subtokens is None:
            return rows
        return fit_rows(rows, extension.old_vocab, subtokens, model.vocab_size)

    progress = ConversionProgress("import", 0, progress_stream)
    progress.message(f"{hf_dir} -> {out_dir} ({family_of(model).num_parameters(model) / 1e6:.1f}M parameters, {target_dtype})")
    if extension is not None:
        progress.message(f"vocabulary extended {extension.old_vocab} -> {extension.new_vocab} from {tokenizer_plan.file} "
                         f"({extension.without_subtokens} new pieces without sub-tokens got the mean row)")
    with single_process_group(), atomic_output_dir(out_dir, overwrite=overwrite) as staging:
        chunk = _build_empty_model(model, target_dtype, spec)
        progress.total_bytes = sum(p.numel() * p.element_size() for p in chunk.parameters())
        _Filler(weights, model, model.padded_vocab_size(1), vocab_rows, progress).fill(chunk)
        cfg = Config(
            model=model,
            parallel=ParallelConfig(),  # the layout it is saved at; any other loads it
            data=DataConfig(tokenizer_type=tokenizer_plan.type),
            optim=OptimConfig(bf16=target_dtype == torch.bfloat16, fp16=target_dtype == torch.float16),
            train=TrainConfig(stage="pretrain"),
        )
        progress.message("saving the megatron checkpoint")
        # A LLaMA-2/Mistral original prepends BOS: recorded in the tokenizer copy, evaluation and export follow it.
        adds_bos = hf_dir_adds_bos(hf_dir) if tokenizer_plan.type == "sentencepiece" else None
        Checkpointer(staging).save(0, [chunk], cfg, tokenizer_path=str(tokenizer_plan.file), tokenizer_adds_bos=adds_bos)
        del chunk
    progress.message(f"done: set train.pretrained_checkpoint={iteration_dir(out_dir, 0)}")
    return ImportResult(iteration_dir(out_dir, 0), model, target_dtype, extension)
