"""Hugging Face directory (LLaMA, Qwen2, Qwen3, Mistral families) -> megactllm checkpoint that megactllm.train can start from.

The result is an ordinary megactllm checkpoint (iteration 0, no optimizer state): point
`checkpoint.pretrained` at it to continue pretraining with a fresh optimizer and schedule.

The import streams: the safetensors are read a tensor at a time (a layer's tensors may lie in
several shards), one transformer layer is built at a time from megatron-core's own layer spec,
filled through the family's weight mapping, written into the dist_checkpointing directory as
megatron-core lays it out (convert.dist_writer) and freed. Memory is about one layer (or the
embedding), whatever the depth; `workers` processes convert layers in parallel. A killed import
rerun continues from the layers already written (convert.atomic.resumable_output_dir); the
output appears only when complete. dist_checkpointing stores global tensors, so it loads at any
TP/PP (megatron loads the padded vocabulary rows with `allow_shape_mismatch`, so even the
padding, which depends on TP, adapts). `target_tp`/`target_pp` are checked against the model's
shape up front, so a layout the model cannot be split into fails here and not at training start.
`spec="te"` builds the whole model with Transformer Engine's modules instead (GPU, not streamed).

Given a tokenizer that extends the model's own (`tokenizer_file` with more ids), the embedding and
output rows of the new pieces are initialised from their old sub-tokens (see convert.vocab).
"""
from __future__ import annotations

import dataclasses
import re
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
from megactllm.convert.atomic import atomic_output_dir, file_fingerprint, resumable_output_dir
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
from megactllm.model.families.moe import GATE_UP_KEYS, HF_FUSED_DOWN, HF_FUSED_GATE_UP, MOE_PRE_MLP_NORM, expert_of
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
    checkpoint: Path  # the iteration directory, for checkpoint.pretrained
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


class HfLayerTensors:
    """Layer tensors of an HF checkpoint by (layer, name within the layer), either expert layout.

    Per-expert names (`mlp.experts.{e}.gate_proj.weight`, the Hub's layout and what transformers 5
    saves) are read as they are; a checkpoint holding transformers 5's fused per-layer tensors
    (`mlp.experts.gate_up_proj` [E, 2f, h], `mlp.experts.down_proj` [E, h, f]) gives each expert's
    slice of them, after their shapes are checked.
    """

    def __init__(self, weights: SafetensorsCheckpoint, model: ModelConfig):
        self.weights, self.model = weights, model
        self.shapes = layout.Shapes(model)

    def _fused(self, i: int, name: str) -> Optional[tuple[str, int, str]]:
        expert = expert_of(name)
        if expert is None:
            return None
        fused = HF_FUSED_DOWN if expert[1] == "down_proj" else HF_FUSED_GATE_UP
        return layout.hf_layer(i, fused), expert[0], expert[1]

    def check(self, i: int, name: str) -> None:
        full = layout.hf_layer(i, name)
        fused = self._fused(i, name) if full not in self.weights else None
        if fused is not None and fused[0] in self.weights:
            full, shape = fused[0], self.shapes.hf_layer(fused[0].split(".", 3)[3])
        else:
            shape = self.shapes.hf_layer(name)
        spec = self.weights.spec(full)  # raises, naming the directory, when absent
        if tuple(spec.shape) != tuple(shape):
            raise ConversionError(
                f"{self.weights.entries[full].file}: {full} is {tuple(spec.shape)} but config.json implies {tuple(shape)}"
            )

    def read(self, i: int, name: str) -> torch.Tensor:
        full = layout.hf_layer(i, name)
        fused = self._fused(i, name) if full not in self.weights else None
        if fused is None:
            return self.weights.read(full)
        stacked, expert, part = self.weights.read(fused[0]), fused[1], fused[2]
        if part == "down_proj":
            return stacked[expert].clone()
        gate, up = stacked[expert].chunk(2, dim=0)
        return (gate if part == "gate_proj" else up).clone()


def check_hf_tensors(weights: SafetensorsCheckpoint, model: ModelConfig) -> None:
    """Every tensor the family's HF class needs is present with its shape, before any work starts."""
    shapes = layout.Shapes(model)
    expected = {layout.HF_EMBEDDING: shapes.vocab_rows(), layout.HF_FINAL_NORM: (model.hidden_size,)}
    if not model.tie_word_embeddings:
        expected[layout.HF_LM_HEAD] = shapes.vocab_rows()
    for name, shape in expected.items():
        spec = weights.spec(name)  # raises, naming the directory, when absent
        if tuple(spec.shape) != tuple(shape):
            raise ConversionError(
                f"{weights.entries[name].file}: {name} is {tuple(spec.shape)} but config.json implies {tuple(shape)}"
            )
    layers = HfLayerTensors(weights, model)
    for i in range(model.num_layers):
        for names in layout.layer_tensors_at(model, i).values():
            for name in names:
                layers.check(i, name)


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
SPECS = ("local", "te", "local-whole")


class _Filler:
    """Fills a GPTModel built at TP1/PP1 (local spec) from HF tensors, one parameter at a time."""

    def __init__(self, weights: SafetensorsCheckpoint, model: ModelConfig, padded_vocab: int,
                 vocab_rows: Callable[[str], torch.Tensor], progress: ConversionProgress):
        self.weights, self.model, self.padded_vocab = weights, model, padded_vocab
        self.vocab_rows = vocab_rows
        self.progress = progress
        self.layers = HfLayerTensors(weights, model)

    def _layer_tensor(self, i: int, key: str, expert: Optional[int] = None) -> torch.Tensor:
        return layout.to_megatron(key, self._layer_parts(i, key, expert), self.model)

    def _layer_parts(self, i: int, key: str, expert: Optional[int] = None) -> list[torch.Tensor]:
        names = layout.layer_tensors_at(self.model, i)[(key, expert)]
        return [self.layers.read(i, n) for n in names]

    def gate_up_parts(self, param_name: str) -> Optional[list[torch.Tensor]]:
        """The HF gate and up tensors of a fused gate/up parameter, else None."""
        _, _, index, rest = param_name.split(".", 3)
        found = self._layer_key(int(index), rest)
        if found is None or found[0] not in GATE_UP_KEYS:
            return None
        return self._layer_parts(int(index), *found)

    def _layer_key(self, i: int, rest: str) -> Optional[tuple[str, Optional[int]]]:
        """(megatron key, expert) of a parameter `rest` within layer i, if the family maps it."""
        here = layout.layer_tensors_at(self.model, i)
        match = re.match(r"^mlp\.experts\.local_experts\.(\d+)\.(.+)$", rest)
        if match:  # SequentialMLP's expert e (TP1/EP1 build: local index = global index)
            candidate = (f"decoder.layers.mlp.experts.experts.{match.group(2)}", int(match.group(1)))
        elif rest == "pre_mlp_layernorm.weight" and (MOE_PRE_MLP_NORM, None) in here:
            candidate = (MOE_PRE_MLP_NORM, None)
        elif rest in _LAYER_KEYS:
            candidate = (_LAYER_KEYS[rest], None)
        else:
            candidate = (f"decoder.layers.{rest}", None)
        return candidate if candidate in here else None

    def tensor_for(self, param_name: str) -> torch.Tensor:
        if param_name == "embedding.word_embeddings.weight":
            return layout.pad_vocab(self.vocab_rows(layout.HF_EMBEDDING), self.padded_vocab)
        if param_name == "output_layer.weight":
            return layout.pad_vocab(self.vocab_rows(layout.HF_LM_HEAD), self.padded_vocab)
        if param_name == "decoder.final_layernorm.weight":
            return self.weights.read(layout.HF_FINAL_NORM)
        if param_name.startswith("decoder.layers."):
            _, _, index, rest = param_name.split(".", 3)
            found = self._layer_key(int(index), rest)
            if found is not None:
                return self._layer_tensor(int(index), *found)
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
    if spec == "local-whole":  # the local spec built whole: the former import, kept as the tests' reference
        spec = "local"
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


def _import_config(model: ModelConfig, dtype: torch.dtype, tokenizer_type: str) -> Config:
    return Config(
        model=model,
        parallel=ParallelConfig(),  # the layout it is saved at; any other loads it
        data=DataConfig(tokenizer_type=tokenizer_type),
        optim=OptimConfig(bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16),
        train=TrainConfig(stage="pretrain"),
    )


@dataclass
class _StreamJob:
    """What a process converting groups needs (picklable: sent to --workers processes)."""

    hf_dir: Path
    model: ModelConfig
    dtype: torch.dtype
    model_dir: Path
    index_dir: Path
    subtokens: Optional[list] = None
    old_vocab: Optional[int] = None


def _groups(model: ModelConfig) -> list[str]:
    """The units written (and resumed) one at a time: the embedding, the head, then each layer.
    The largest first: the last group's sealing (fsync, checksum) is the one nothing overlaps."""
    return ["embedding", "head", *[f"layer{i:06d}" for i in range(model.num_layers)]]


def _non_homogeneous_layers(config) -> bool:
    """Whether megatron-core's TransformerBlock saves each layer under its own key (MoE models with
    dense layers, heterogeneous blocks) instead of stacking them on a layer axis; its own rule."""
    freq = getattr(config, "moe_layer_freq", 1)
    linear = getattr(config, "linear_attention_freq", None)
    return bool(
        getattr(config, "hetereogenous_dist_checkpoint", False) or getattr(config, "heterogeneous_block_specs", False)
        or isinstance(freq, list) or (isinstance(freq, int) and freq > 1)
        or isinstance(linear, list) or (isinstance(linear, int) and linear > 1)
    )


class _GroupBuilder:
    """The sharded state dict of one group, filled from the HF files (one process; inside a process group)."""

    def __init__(self, job: _StreamJob):
        from megactllm.model import build_transformer_config, decoder_block_spec, layer_spec
        from megactllm.parallel import initialize_parallel

        self.job, model = job, job.model
        parallel = ParallelConfig()
        initialize_parallel(parallel, seed=0, num_layers=model.num_layers)
        optim = OptimConfig(bf16=job.dtype == torch.bfloat16, fp16=job.dtype == torch.float16)
        self.config = build_transformer_config(model, parallel, optim)
        self.config.use_cpu_initialization = True
        self.config.perform_initialization = False  # every weight is overwritten from the HF files
        self.layer_specs = decoder_block_spec(model, self.config, spec=layer_spec(use_transformer_engine=False)).layer_specs
        self.weights = SafetensorsCheckpoint(job.hf_dir)
        self.filler = _Filler(self.weights, model, model.padded_vocab_size(1), self._vocab_rows, progress=None)

    def _vocab_rows(self, name: str) -> torch.Tensor:
        rows = self.weights.read(name)
        if self.job.subtokens is None:
            return rows
        return fit_rows(rows, self.job.old_vocab, self.job.subtokens, self.job.model.vocab_size)

    def _top(self, key: str, **kwargs):
        from megactllm.convert.dist_writer import sharded_tensor

        return sharded_tensor(key, self.filler.tensor_for(key).to(self.job.dtype).contiguous(), **kwargs)

    def build(self, group: str) -> tuple[dict, tuple]:
        """(sharded state dict, dist_writer.Concatenations) of one group."""
        if group == "embedding":
            return {layout.EMBEDDING: self._top(layout.EMBEDDING, tp_axis=0, allow_shape_mismatch=True)}, ()
        if group == "head":
            state = {layout.FINAL_NORM: self._top(layout.FINAL_NORM)}
            if not self.job.model.tie_word_embeddings:
                state[layout.OUTPUT_LAYER] = self._top(layout.OUTPUT_LAYER, tp_axis=0, allow_shape_mismatch=True)
            return state, ()
        return self._layer(int(group[len("layer"):]))

    def _layer(self, i: int) -> dict:
        """Layer i as TransformerBlock.sharded_state_dict gives it: built from megatron's spec, so every
        key, chunk and extra state is megatron-core's own."""
        from megatron.core.dist_checkpointing.utils import replace_prefix_for_sharding
        from megatron.core.transformer.spec_utils import build_module

        from megactllm.convert.dist_writer import Concatenation

        layer = build_module(self.layer_specs[i], config=self.config, layer_number=i + 1)
        concatenations = []
        with torch.no_grad():
            for name, param in layer.named_parameters():
                param_name = f"decoder.layers.{i}.{name}"
                parts = self.filler.gate_up_parts(param_name)
                if parts is not None:  # written from the HF tensors themselves (dist_writer.Concatenation)
                    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
                    parts = [p.to(param.dtype).contiguous() for p in parts]
                else:
                    source = self.filler.tensor_for(param_name)
                    shape = tuple(source.shape)
                if tuple(shape) != tuple(param.shape):
                    raise ConversionError(f"{param_name}: HF gives {tuple(shape)}, the model has {tuple(param.shape)}")
                if parts is not None:
                    param.data = torch.empty(param.shape, dtype=param.dtype)  # untouched unless a chunk needs it
                    concatenations.append(Concatenation(param.data, parts))
                else:
                    param.data = source.to(param.dtype).contiguous()  # replaces the never-touched empty buffer
        prefix = f"decoder.layers.{i}."
        if _non_homogeneous_layers(self.config):
            state = layer.sharded_state_dict(prefix, [], None)
        else:
            state = layer.sharded_state_dict(prefix, [(0, i, self.config.num_layers)], None)
            replace_prefix_for_sharding(state, prefix, "decoder.layers.")
        return state, tuple(concatenations)


def _group_bytes(job: _StreamJob, group: str) -> int:
    size = torch.empty((), dtype=job.dtype).element_size()
    if group == "embedding":
        return job.model.padded_vocab_size(1) * job.model.hidden_size * size
    if group == "head":
        rows = 0 if job.model.tie_word_embeddings else job.model.padded_vocab_size(1)
        return (rows + 1) * job.model.hidden_size * size
    family = family_of(job.model)
    split, replicated = family.layer_parameters(job.model)
    return (split + replicated + family.expert_parameters(job.model) // job.model.num_layers) * size


def _write_groups(job: _StreamJob, groups: list[str], progress: Optional[ConversionProgress] = None) -> list[str]:
    """Convert `groups` not written yet (this process); returns them."""
    from megactllm.convert.dist_writer import DistCheckpointWriter

    with single_process_group(), DistCheckpointWriter(job.model_dir, job.index_dir) as writer:
        builder = _GroupBuilder(job)
        for group in groups:
            if writer.has(group):
                continue
            writer.write(group, *builder.build(group))
            if progress is not None:
                progress.update(_group_bytes(job, group), group)
    return groups


def _worker_setup(job: _StreamJob, stack) -> Callable[[str], None]:
    """In a --workers process, once: its process group, layer builder and writer (convert.workers)."""
    from megactllm.convert.dist_writer import DistCheckpointWriter

    stack.enter_context(single_process_group())
    writer = stack.enter_context(DistCheckpointWriter(job.model_dir, job.index_dir))
    builder = _GroupBuilder(job)

    def convert(group: str) -> None:
        if not writer.has(group):
            writer.write(group, *builder.build(group))
            writer.wait()  # sealed (synced, indexed) before the parent counts it done

    return convert


def _convert_groups(job: _StreamJob, workers: int, progress: ConversionProgress) -> None:
    from megactllm.convert.dist_writer import DistCheckpointWriter
    from megactllm.convert.workers import convert_in_workers

    todo = [g for g in _groups(job.model) if not DistCheckpointWriter(job.model_dir, job.index_dir).has(g)]
    done = len(_groups(job.model)) - len(todo)
    if done:
        progress.message(f"resuming: {done} of {len(_groups(job.model))} groups were written by an earlier run")
        progress.update(sum(_group_bytes(job, g) for g in _groups(job.model) if g not in todo), "earlier run")
    if workers <= 1 or len(todo) <= 1:
        _write_groups(job, todo, progress)
        return
    convert_in_workers(_worker_setup, job, todo, min(workers, len(todo)),
                       lambda group: progress.update(_group_bytes(job, group), group))


def _publish_model(run_dir: Path, cfg: Config, tokenizer_file: Path, adds_bos: Optional[bool],
                   model_checksums: dict) -> Path:
    """Make `run_dir` a megactllm checkpoint of iteration 0 around its finished model/ directory:
    the checkpoint package's publish step (tokenizer copy, manifest, metadata, latest pointer), as
    for a model-only save. The whole run_dir is staged, so its iter_0000000 is published in place.
    `model_checksums` ({file in model/: [size, crc32]}) are the writer's, taken as it sealed them."""
    from megactllm.checkpoint import build_metadata, iteration_dir, publish_checkpoint

    metadata = build_metadata(0, cfg, tokenizer_file=str(tokenizer_file))
    known = {f"model/{name}": entry for name, entry in model_checksums.items()}
    return publish_checkpoint(iteration_dir(run_dir, 0), metadata, tokenizer_file, adds_bos, known_checksums=known)


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
    workers: int = 1,
) -> ImportResult:
    """Convert an HF directory of a supported family into a megactllm checkpoint run directory `out_dir`.

    Streams a layer at a time in `workers` processes (spec "local"); a killed run rerun with the
    same arguments continues where it stopped. spec="te" builds the whole model on the GPU instead.
    """
    from megactllm.checkpoint import iteration_dir

    if workers < 1:
        raise ConversionError(f"workers={workers}: give at least 1")
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    model = model_config_from_hf(read_hf_config(hf_dir), str(config_path))
    check_target_layout(model, target_tp, target_pp, str(config_path))
    weights = SafetensorsCheckpoint(hf_dir)
    check_hf_tensors(weights, model)

    model, tokenizer_plan = _plan_tokenizer(hf_dir, model, tokenizer_file, tokenizer_type)
    subtokens, extension = tokenizer_plan.subtokens, tokenizer_plan.extension

    target_dtype = dtype_from_name(dtype) if dtype else weights.spec(layout.HF_EMBEDDING).dtype
    progress = ConversionProgress("import", 0, progress_stream)
    progress.message(f"{hf_dir} -> {out_dir} ({family_of(model).num_parameters(model) / 1e6:.1f}M parameters, {target_dtype})")
    if extension is not None:
        progress.message(f"vocabulary extended {extension.old_vocab} -> {extension.new_vocab} from {tokenizer_plan.file} "
                         f"({extension.without_subtokens} new pieces without sub-tokens got the mean row)")
    cfg = _import_config(model, target_dtype, tokenizer_plan.type)
    adds_bos = hf_dir_adds_bos(hf_dir) if tokenizer_plan.type == "sentencepiece" else None
    if spec != "local":
        _import_whole_model(weights, model, target_dtype, subtokens, extension, cfg, tokenizer_plan.file,
                            spec, out_dir, overwrite, progress, adds_bos)
        return ImportResult(iteration_dir(out_dir, 0), model, target_dtype, extension)

    inputs = [config_path, tokenizer_plan.file, *{e.file for e in weights.entries.values()}]
    index = hf_dir / "model.safetensors.index.json"
    plan = {"kind": "import", "format": 2, "inputs": file_fingerprint(inputs + ([index] if index.is_file() else [])),
            "dtype": str(target_dtype), "model": dataclasses.asdict(model), "tokenizer": str(tokenizer_plan.file)}
    with resumable_output_dir(out_dir, plan, overwrite=overwrite) as (staging, _resumed):
        index_dir = staging / ".groups"
        job = _StreamJob(hf_dir.absolute(), model, target_dtype, iteration_dir(staging, 0) / "model", index_dir,
                         subtokens, extension.old_vocab if extension is not None else None)
        progress.total_bytes = sum(_group_bytes(job, g) for g in _groups(model))
        _convert_groups(job, workers, progress)
        from megactllm.convert.dist_writer import DistCheckpointWriter

        with single_process_group():
            checksums = DistCheckpointWriter(job.model_dir, index_dir).finish(_groups(model))
        # A LLaMA-2/Mistral original prepends BOS: recorded in the tokenizer copy, evaluation and export follow it.
        _publish_model(staging, cfg, tokenizer_plan.file, adds_bos, checksums)
        import shutil

        shutil.rmtree(index_dir)
    progress.message(f"done: set checkpoint.pretrained={iteration_dir(out_dir, 0)}")
    return ImportResult(iteration_dir(out_dir, 0), model, target_dtype, extension)


def _import_whole_model(weights, model, target_dtype, subtokens, extension, cfg, tokenizer_file, spec, out_dir,
                        overwrite, progress, adds_bos) -> None:
    """The whole GPTModel built at once and saved by dist_checkpointing.save (spec "te", on a GPU;
    also the reference the streamed import is tested against)."""
    from megactllm.checkpoint import Checkpointer

    def vocab_rows(name: str) -> torch.Tensor:
        rows = weights.read(name)
        if subtokens is None:
            return rows
        return fit_rows(rows, extension.old_vocab, subtokens, model.vocab_size)

    with single_process_group(), atomic_output_dir(out_dir, overwrite=overwrite) as staging:
        chunk = _build_empty_model(model, target_dtype, spec)
        progress.total_bytes = sum(p.numel() * p.element_size() for p in chunk.parameters())
        _Filler(weights, model, model.padded_vocab_size(1), vocab_rows, progress).fill(chunk)
        progress.message("saving the megatron checkpoint")
        # A LLaMA-2/Mistral original prepends BOS: recorded in the tokenizer copy, evaluation and export follow it.
        Checkpointer(staging).save(0, [chunk], cfg, tokenizer_path=str(tokenizer_file), tokenizer_adds_bos=adds_bos)
        del chunk
