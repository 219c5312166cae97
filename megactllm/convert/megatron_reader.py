"""Read a megactllm checkpoint's model tensors, one global (layout-free) tensor at a time.

No model is built: the tensors are read from megatron-core's dist_checkpointing directory by key
at their global shape (convert.dist_reader), whatever TP/PP layout wrote them, so exporting needs
no GPU; `read_layer_region` reads (part of) one layer's slice of the stacked keys, so memory stays one layer
whatever the depth. Tensors are mapped from the files (no copy) where the layout allows.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from megactllm.convert import layout
from megactllm.convert.errors import ConversionError
from megactllm.checkpoint import CheckpointError, CheckpointMetadata, Checkpointer, read_metadata


@dataclass(frozen=True)
class StoredTensor:
    global_shape: tuple
    dtype: torch.dtype


class MegatronCheckpointReader:
    """Files are checked before reading: sizes at once, CRC-32s per `checksums`: "now", or
    "background" (a thread checks while the caller reads: call `finish_verification()` before
    anything read is published), or "skip" (a helper process of a caller that checks them)."""

    def __init__(self, path: str | Path, checksums: str = "now"):
        try:
            self.metadata: CheckpointMetadata = read_metadata(path)
        except CheckpointError as e:
            raise ConversionError(str(e)) from None
        # What an export reads must be what was saved: sizes and checksums of the model and tokenizer files.
        self._verification: Optional[threading.Thread] = None
        self._damage: list = []
        if checksums not in ("now", "background", "skip"):
            raise ValueError(f"checksums={checksums!r}")
        self._verify(checksums == "now")
        if checksums == "background":
            self._verification = threading.Thread(target=self._verify_in_background, daemon=True, name="verify")
            self._verification.start()
        self.model = self.metadata.model_config
        self.model_dir = self.metadata.path / "model"
        if not self.model_dir.is_dir():
            raise ConversionError(f"{self.metadata.path} has no model/ directory: the checkpoint is incomplete")
        from megactllm.convert.dist_reader import DistCheckpointFiles
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        try:
            self.files = DistCheckpointFiles(self.model_dir)
        except Exception as e:  # torch raises several types for unreadable metadata
            raise ConversionError(f"{self.model_dir} is not a readable dist_checkpointing directory: {e}") from None
        self.tensors = {key: StoredTensor(tuple(meta.size), meta.properties.dtype)
                        for key, meta in self.files.metadata.state_dict_metadata.items()
                        if isinstance(meta, TensorStorageMetadata)}
        self._check_shapes()

    def _verify(self, checksums: bool) -> None:
        report = Checkpointer.verify(self.metadata.path, checksums=checksums, parts=("model", "tokenizer"))
        if not report.ok:
            problem = f"checkpoint {report.summary()}: damaged, not read (megactllm checkpoint verify shows all)"
            if self._verification is None:
                raise ConversionError(problem)
            self._damage.append(problem)

    def _verify_in_background(self) -> None:
        try:
            self._verify(True)
        except BaseException as e:  # raised again by finish_verification, in the caller's thread
            self._damage.append(e)

    def finish_verification(self) -> None:
        """Wait for the background checksums; raise if a file is damaged."""
        if self._verification is not None:
            self._verification.join()
            self._verification = None
        if self._damage:
            problem = self._damage[0]
            raise problem if isinstance(problem, BaseException) else ConversionError(problem)

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
        return self._read(key, key)

    def stored_key(self, key: str, i: int) -> str:
        """Where layer i's `key` is stored: stacked over layers, or on its own when layers differ
        (an MoE model with dense layers: megatron keys each layer `decoder.layers.{i}.…`)."""
        if key in self.tensors:
            return key
        return layout.per_layer_key(key, i)

    def read_layer_region(self, key: str, layer: int, offsets: tuple = (), sizes: tuple = ()) -> torch.Tensor:
        """Part of layer `layer`'s tensor of `key`: `sizes` from `offsets` along its leading axes
        (the layer's own axes); a view of the file when the part is one stored chunk."""
        stored = self.stored_key(key, layer)
        if stored != key:
            return self._read(stored, f"layer {layer}", offsets, sizes)
        return self._read(key, f"layer {layer}", (layer, *offsets), (1, *sizes))[0]

    def _read(self, key: str, what: str, offsets: tuple = (), sizes: tuple = ()) -> torch.Tensor:
        try:
            return self.files.read(key, offsets, sizes)
        except ConversionError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # a damaged data file fails in torch's zip reader or the unpickler
            self.finish_verification()  # the checksums name the damaged file, when they run in the background
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ConversionError(
                f"{self.model_dir}: reading {what} failed ({type(e).__name__}: {reason}); the checkpoint's data "
                "files are damaged or incomplete"
            ) from e
