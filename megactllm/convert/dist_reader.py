"""Read regions of the global tensors of a torch_dist (dist_checkpointing) directory, mapped from its files.

`dist_checkpointing.load` reads each stored chunk into fresh memory with torch.load and copies
it again into the caller's tensor. An export reads each weight once to write it out, so here a
chunk is mapped instead (convert.mapped_file): the index (`.metadata`, read by torch's own
FileSystemReader) gives the chunk's file and byte range, which holds what torch.save wrote, a zip
archive whose tensor bytes are stored uncompressed; its pickle names the storage record and the
tensor's offset, shape and strides. A region that is exactly one chunk (any checkpoint written at
TP1, e.g. by the importer) is returned without a copy; one spread over chunks (TP>1) is assembled.
A record in any other form (a torch.save format this does not know) is read by torch.load.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch

from megactllm.convert.errors import ConversionError
from megactllm.convert.mapped_file import map_bytes


class _OtherFormat(Exception):
    """The record is not a plain tensor torch.save this reader knows: torch.load reads it."""


class _FileSlice(io.RawIOBase):
    """Bytes [start, start + length) of an open file, as a seekable file of its own (for zipfile)."""

    def __init__(self, f, start: int, length: int):
        self.f, self.start, self.length, self.pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.length + offset}[whence]
        return self.pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.length - self.pos))
        got = os.preadv(self.f.fileno(), [memoryview(buffer)[:n]], self.start + self.pos) if n else 0
        self.pos += got
        return got


class _TensorPickle(pickle.Unpickler):
    """torch.save's pickle of one plain tensor -> (storage record key, storage offset, size, stride)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: (storage, offset, tuple(size), tuple(stride))
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name.endswith("Storage"):
            return name
        raise _OtherFormat(f"{module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise _OtherFormat(f"persistent id {pid!r}")
        return pid[2]  # ('storage', type, key, location, numel)


def _member_start(f, start: int, info: zipfile.ZipInfo) -> int:
    """File offset of a stored (uncompressed) archive member's bytes. Read past zipfile, which
    insists on the member's CRC-32: torch.save may leave it out (the manifest checks the files)."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise _OtherFormat(f"{info.filename} is compressed")
    header = os.pread(f.fileno(), 30, start + info.header_offset)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise _OtherFormat("no local file header")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return start + info.header_offset + 30 + name_length + extra_length


def _mapped_record(path: Path, start: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    with open(path, "rb") as f:
        archive = zipfile.ZipFile(_FileSlice(f, start, length))
        pickled = [info for info in archive.infolist() if info.filename.endswith("/data.pkl")]
        if len(pickled) != 1:
            raise _OtherFormat("no single data.pkl")
        pickle_bytes = os.pread(f.fileno(), pickled[0].file_size, _member_start(f, start, pickled[0]))
        rebuilt = _TensorPickle(io.BytesIO(pickle_bytes)).load()
        if not (isinstance(rebuilt, tuple) and len(rebuilt) == 4):
            raise _OtherFormat("not a tensor")
        key, offset, size, stride = rebuilt
        info = archive.getinfo(pickled[0].filename[: -len("data.pkl")] + f"data/{key}")
        data_start = _member_start(f, start, info)
    storage = map_bytes(path, data_start, info.file_size).view(dtype)
    return storage.as_strided(size, stride, offset)


def _loaded_record(path: Path, start: int, length: int) -> torch.Tensor:
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), length, start)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class DistCheckpointFiles:
    """The stored chunks of a torch_dist directory by tensor key (its `.metadata`, read once)."""

    def __init__(self, model_dir: str | os.PathLike):
        from torch.distributed.checkpoint import FileSystemReader

        self.model_dir = Path(model_dir)
        self.metadata = FileSystemReader(str(self.model_dir)).read_metadata()
        self._storage = {(index.fqn, tuple(index.offset)): info for index, info in self.metadata.storage_data.items()
                         if index.offset is not None}  # the others are objects (extra state), not tensor chunks

    def _chunk(self, key: str, chunk, dtype: torch.dtype) -> torch.Tensor:
        info = self._storage[(key, tuple(chunk.offsets))]
        path = self.model_dir / info.relative_path
        if getattr(info, "transform_descriptors", None):
            raise ConversionError(f"{path}: {key} is stored transformed ({info.transform_descriptors}); not supported")
        try:
            tensor = _mapped_record(path, info.offset, info.length, dtype)
        except (_OtherFormat, zipfile.BadZipFile, KeyError):
            tensor = _loaded_record(path, info.offset, info.length)
        if tuple(tensor.shape) != tuple(chunk.sizes) or tensor.dtype != dtype:
            raise ConversionError(f"{path}: a chunk of {key} is {tuple(tensor.shape)} {tensor.dtype} where the index "
                                  f"says {tuple(chunk.sizes)} {dtype}")
        return tensor

    def read(self, key: str, offsets: tuple = (), sizes: tuple = ()) -> torch.Tensor:
        """The region of tensor `key` starting at `offsets` of `sizes` along the leading axes
        (all of it by default); a view of the file when the region is one stored chunk."""
        meta = self.metadata.state_dict_metadata[key]
        shape = tuple(meta.size)
        offsets = tuple(offsets) + (0,) * (len(shape) - len(offsets))
        sizes = tuple(sizes) + shape[len(sizes):]
        dtype = meta.properties.dtype
        result, covered = None, 0
        for chunk in meta.chunks:
            begin = [max(o, c) for o, c in zip(offsets, chunk.offsets)]
            end = [min(o + s, c + n) for o, s, c, n in zip(offsets, sizes, chunk.offsets, chunk.sizes)]
            if any(b >= e for b, e in zip(begin, end)):
                continue
            if tuple(chunk.offsets) == offsets and tuple(chunk.sizes) == sizes:
                return self._chunk(key, chunk, dtype)
            if result is None:
                result = torch.empty(sizes, dtype=dtype)
            source = self._chunk(key, chunk, dtype)[tuple(slice(b - c, e - c) for b, e, c in zip(begin, end, chunk.offsets))]
            result[tuple(slice(b - o, e - o) for b, e, o in zip(begin, end, offsets))].copy_(source)
            covered += source.numel()
        if result is None or covered != result.numel():
            raise ConversionError(f"{self.model_dir}: the stored chunks of {key} do not cover {sizes} at {offsets}")
        return result
