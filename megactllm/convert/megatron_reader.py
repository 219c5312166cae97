"""Read a megactllm checkpoint's model tensors, one global (layout-free) tensor at a time.

No model is built: the tensors are read from megatron-core's dist_checkpointing by key at their
global shape, whatever TP/PP layout wrote them, so exporting needs no GPU; `read_layer` reads one
layer's slice of the stacked keys, so memory stays one layer whatever the depth. Call inside
`single_process_group()`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from megactllm.convert import layout
from megactllm.convert.errors import ConversionError
from megactllm.checkpoint import CheckpointError, CheckpointMetadata, Checkpointer, read_metadata


class MegatronCheckpointReader:
    def __init__(self, path: str | Path):
        try:
            self.metadata: CheckpointMetadata = read_metadata(path)
        except CheckpointError as e:
            raise ConversionError(str(e)) from None
        # What an export reads must be what was saved: sizes and checksums of the model and tokenizer files.
        report = Checkpointer.verify(self.metadata.path, checksums=True, parts=("model", "tokenizer"))
        if not report.ok:
            raise ConversionError(f"checkpoint {report.summary()}: damaged, not read (megactllm checkpoint verify shows all)")
        self.model = self.metadata.model_config
        self.model_dir = self.metadata.path / "model"
        if not self.model_dir.is_dir():
            raise ConversionError(f"{self.metadata.path} has no model/ directory: the checkpoint is incomplete")
        from megatron.core import dist_checkpointing

        try:
            self.tensors = dict(dist_checkpointing.load_tensors_metadata(str(self.model_dir)))
        except Exception as e:  # megatron raises several types for unreadable metadata
            raise ConversionError(f"{self.model_dir} is not a readable dist_checkpointing directory: {e}") from None
        self._check_shapes()

    def _expected(self) -> dict[str, tuple]:
        shapes = layout.Shapes(self.model)
        layers = self.model.num_layers
        expected = {}
        for i in range(layers):
            for key, expert in layout.layer_tensors_at(self.model, i):
                axes = (self.model.num_moe_experts,) if expert is not None else ()
                stored = self.stored_key(key, i)
                expected[stored] = ((layers,) if stored == key else ()) + axes + tuple(shapes.megatron_layer(key))
        expected[layout.FINAL_NORM] = (self.model.hidden_size,)
        expected[layout.EMBEDDING] = None  # padded rows: checked separately
        if not self.model.tie_word_embeddings:
            expected[layout.OUTPUT_LAYER] = None
        return expected

    def _check_shapes(self) -> None:
        """The stored shapes must be the ones the metadata's ModelConfig implies."""
        where = self.model_dir
        for key, shape in self._expected().items():
            if key not in self.tensors:
                raise ConversionError(f"{where} has no tensor {key}: not a megactllm GPT checkpoint, or an incomplete one")
            stored = tuple(self.tensors[key].global_shape)
            if shape is None:
                rows, hidden = stored
                if rows < self.model.vocab_size or hidden != self.model.hidden_size:
                    raise ConversionError(
                        f"{where}: {key} is {stored}, which cannot hold vocab_size={self.model.vocab_size} x "
                        f"hidden_size={self.model.hidden_size} from {self.metadata.path / 'megactllm.json'}"
                    )
            elif stored != shape:
                raise ConversionError(
                    f"{where}: {key} is {stored} but the model config in {self.metadata.path / 'megactllm.json'} "
                    f"implies {shape}"
                )

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors[layout.EMBEDDING].dtype

    def read(self, key: str) -> torch.Tensor:
        """The whole global tensor stored under `key` (layers stacked on the first axis)."""
        from megatron.core.dist_checkpointing import ShardedTensor

        info = self.tensors[key]
        target = torch.empty(tuple(info.global_shape), dtype=info.dtype)
        return self._load({key: ShardedTensor.from_rank_offsets(key, target, replica_id=0)}, key)[key]

    def stored_key(self, key: str, i: int) -> str:
        """Where layer i's `key` is stored: stacked over layers, or on its own when layers differ
        (an MoE model with dense layers: megatron keys each layer `decoder.layers.{i}.…`)."""
        if key in self.tensors:
            return key
        return layout.per_layer_key(key, i)

    def read_layer(self, keys, layer: int) -> dict[str, torch.Tensor]:
        """Layer `layer`'s tensor of each per-layer key (stacked or its own), in one read."""
        from megatron.core.dist_checkpointing import ShardedTensor

        request = {}
        for key in keys:
            stored = self.stored_key(key, layer)
            if stored != key:
                info = self.tensors[stored]
                target = torch.empty(tuple(info.global_shape), dtype=info.dtype)
                request[key] = ShardedTensor.from_rank_offsets(stored, target, replica_id=0)
                continue
            info = self.tensors[key]
            # The layer axis as a real axis of size 1 (a prepended one would have to list every
            # layer as local in a world of one process).
            target = torch.empty((1, *tuple(info.global_shape)[1:]), dtype=info.dtype)
            request[key] = ShardedTensor.from_rank_offsets(key, target, (0, layer, info.global_shape[0]), replica_id=0)
        # One layer of a stacked tensor covers part of it: megatron's whole-tensor access check is for saves.
        loaded = self._load(request, f"layer {layer}", validate_access_integrity=False)
        return {key: tensor if self.stored_key(key, layer) != key else tensor[0] for key, tensor in loaded.items()}

    def _load(self, request: dict, what: str, **kwargs) -> dict:
        from megatron.core import dist_checkpointing

        key = what
        try:
            return dist_checkpointing.load(request, str(self.model_dir), **kwargs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # torch's CheckpointException derives from BaseException
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ConversionError(
                f"{self.model_dir}: reading {key} failed ({type(e).__name__}: {reason}); the checkpoint's data "
                "files are damaged or incomplete"
            ) from e
