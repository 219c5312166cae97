"""Streaming safetensors I/O: a sharded writer and a validating reader, one tensor at a time.

Neither side ever holds more than one tensor in memory. The writer plans every shard's header
from the tensor names, shapes and dtypes before any data exists, then appends each tensor's
bytes as it is produced; the reader parses headers and maps one tensor's bytes at a time (the
mapping lives as long as the tensor, so resident memory stays one tensor, not the whole file).

The format is the one the `safetensors` library writes: an 8-byte little-endian header length,
a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}} padded
with spaces to a multiple of 8, then the raw little-endian bytes of the tensors.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from megactllm.convert.errors import ConversionError
from megactllm.convert.mapped_file import map_bytes

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_DTYPE_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}


def dtype_code(dtype: torch.dtype) -> str:
    return _DTYPE_CODES[dtype]


def tensor_nbytes(shape: Iterable[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.dtype)


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def plan_shards(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive runs of `specs`, each at most max_shard_bytes (a bigger tensor gets its own shard)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards if shards[0] else []


def _header_bytes(specs: list[TensorSpec], metadata: dict) -> bytes:
    header: dict = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": dtype_code(spec.dtype),
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


class PlannedSafetensorsFiles:
    """Size-bounded shards whose headers are planned before any data: every tensor's file and byte
    offset is known up front, so tensors are written in any order, by any process (pwrite), and a
    rerun rewrites only what it redoes.

        files = PlannedSafetensorsFiles(out_dir, specs, max_shard_bytes=5 * 2**30)
        files.create()                  # headers, files at full size (kept when already right)
        files.write(name, tensor)       # from any process that made its own PlannedSafetensorsFiles
        files.sync([0])                 # fsync shards (any process), e.g. before marking work done
        files.close()
        files.sync_all()                # fsync every shard
        files.write_index()             # the HF index file (more than one shard)
    """

    def __init__(self, out_dir: str | os.PathLike, specs: list[TensorSpec], max_shard_bytes: int, metadata: Optional[dict] = None):
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names in the safetensors plan")
        self.out_dir = Path(out_dir)
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards = plan_shards(specs, max_shard_bytes)
        self.files = _shard_names(len(self.shards))
        self.headers = [_header_bytes(shard, self.metadata) for shard in self.shards]
        self.where: dict[str, tuple[int, int, TensorSpec]] = {}  # name -> (shard, absolute offset, spec)
        for index, shard in enumerate(self.shards):
            offset = len(self.headers[index])
            for spec in shard:
                self.where[spec.name] = (index, offset, spec)
                offset += spec.nbytes
        self._handles: dict[int, int] = {}

    def _size(self, index: int) -> int:
        return len(self.headers[index]) + sum(spec.nbytes for spec in self.shards[index])

    def create(self) -> None:
        for index, name in enumerate(self.files):
            path = self.out_dir / name
            if path.is_file() and path.stat().st_size == self._size(index):
                with open(path, "rb") as f:
                    if f.read(len(self.headers[index])) == self.headers[index]:
                        continue  # a rerun's: its finished tensors stay
            with open(path, "wb") as f:
                f.write(self.headers[index])
                f.truncate(self._size(index))

    def write(self, name: str, tensor: torch.Tensor) -> int:
        """Write the planned tensor `name`; returns the index of its shard."""
        if name not in self.where:
            raise ValueError(f"tensor {name} was not planned")
        index, offset, spec = self.where[name]
        if tuple(tensor.shape) != tuple(spec.shape) or tensor.dtype != spec.dtype:
            raise ValueError(f"tensor {name} {tuple(tensor.shape)} {tensor.dtype} written where the plan expects "
                             f"{tuple(spec.shape)} {spec.dtype}")
        if index not in self._handles:
            self._handles[index] = os.open(self.out_dir / self.files[index], os.O_WRONLY)
        data = memoryview(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
        done = 0
        while done < len(data):  # one write moves at most ~2 GiB on Linux
            done += os.pwrite(self._handles[index], data[done:], offset + done)
        return index

    def close(self) -> None:
        for fd in self._handles.values():
            os.close(fd)
        self._handles.clear()

    def sync(self, indexes: Iterable[int]) -> None:
        """fsync these shards (whichever process or thread wrote them)."""
        for index in sorted(set(indexes)):
            fd = os.open(self.out_dir / self.files[index], os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def sync_all(self) -> None:
        self.close()
        self.sync(range(len(self.files)))

    @property
    def total_bytes(self) -> int:
        return sum(spec.nbytes for shard in self.shards for spec in shard)

    def write_index(self) -> list[Path]:
        written = [self.out_dir / f for f in self.files]
        if len(self.files) > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": {name: self.files[i] for name, (i, _, _) in self.where.items()},
            }
            index_path = self.out_dir / INDEX_FILE
            index_path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
            written.append(index_path)
        return written


@dataclass(frozen=True)
class _Entry:
    file: Path
    data_start: int  # absolute file offset of the first data byte
    begin: int
    end: int
    dtype: torch.dtype
    shape: tuple


def _read_header(path: Path) -> tuple[dict, int]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConversionError(f"{path} is truncated: {size} bytes, too short for a safetensors header")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8 or length > 100 * 2**20:
                raise ConversionError(f"{path} is truncated or not a safetensors file (header of {length} bytes, file {size})")
            raw = f.read(length)
    except FileNotFoundError:
        raise ConversionError(f"safetensors shard {path} is missing") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path} has a corrupt safetensors header: {e}") from None
    return header, 8 + length


class SafetensorsCheckpoint:
    """The tensors of an HF directory (model.safetensors, or shards listed by the index file).

    Every shard's header is read and its size checked up front, so a missing or truncated shard
    is reported, with its file name, before any conversion work starts.
    """

    def __init__(self, model_dir: str | os.PathLike):
        self.model_dir = Path(model_dir)
        index_path = self.model_dir / INDEX_FILE
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ConversionError(f"{index_path} is not a safetensors index (needs a weight_map): {e}") from None
            files = sorted(set(weight_map.values()))
        elif (self.model_dir / SINGLE_FILE).is_file():
            weight_map, files = None, [SINGLE_FILE]
        else:
            found = sorted(p.name for p in self.model_dir.glob("*.bin")) if self.model_dir.is_dir() else []
            hint = f" (found {found[:3]}: convert PyTorch .bin weights to safetensors first)" if found else ""
            raise ConversionError(f"{self.model_dir} has neither {INDEX_FILE} nor {SINGLE_FILE}{hint}")
        self.entries: dict[str, _Entry] = {}
        for name in files:
            self._add_shard(self.model_dir / name)
        if weight_map is not None:
            for tensor, file in weight_map.items():
                if tensor not in self.entries or self.entries[tensor].file.name != file:
                    raise ConversionError(f"{index_path} maps {tensor} to {file}, but {file} does not hold it")

    def _add_shard(self, path: Path) -> None:
        header, data_start = _read_header(path)
        size = path.stat().st_size
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            dtype = _CODE_DTYPES.get(info["dtype"])
            if dtype is None:
                raise ConversionError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
            if data_start + end > size:
                raise ConversionError(
                    f"{path} is truncated: tensor {name} ends at byte {data_start + end} but the file has {size} bytes"
                )
            if tensor_nbytes(info["shape"], dtype) != end - begin:
                raise ConversionError(f"{path}: tensor {name} has {end - begin} bytes for shape {info['shape']}")
            self.entries[name] = _Entry(path, data_start, begin, end, dtype, tuple(info["shape"]))

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def spec(self, name: str) -> TensorSpec:
        entry = self._entry(name)
        return TensorSpec(name, entry.shape, entry.dtype)

    def _entry(self, name: str) -> _Entry:
        try:
            return self.entries[name]
        except KeyError:
            raise ConversionError(f"tensor {name} is not in the safetensors files of {self.model_dir}") from None

    def read(self, name: str) -> torch.Tensor:
        """The tensor `name`, mapped from its file (convert.mapped_file: no copy until written)."""
        entry = self._entry(name)
        data = map_bytes(entry.file, entry.data_start + entry.begin, entry.end - entry.begin)
        return data.view(entry.dtype).reshape(entry.shape)
