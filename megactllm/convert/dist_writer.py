"""Write a megatron-core dist_checkpointing directory (torch_dist format) one group of tensors at a time.

`dist_checkpointing.save` takes the whole state dict at once; a converted model does not fit in
memory whole. Here each group (the embedding, one layer, the last norm and output layer) goes
through megatron-core's own translation (factories applied, ShardedTensors turned into the
torch ShardedTensors its torch_dist strategy writes, its save planner) and torch's
FileSystemWriter into files of its own (`__<group>_0.distcp`), and the group's storage index is
kept beside the checkpoint. `finish` merges the indexes into the one `.metadata` a load reads
and writes megatron's `common.pt` and `metadata.json`: the directory then reads exactly as one
that `dist_checkpointing.save` wrote (the same keys, chunks, shapes and bytes; file names differ,
and nothing reads them but the index).

A group is sealed by a thread beside the writing one, so the disk and the checksums overlap the
next group's work: its files are fsynced, their CRC-32s taken (while the pages are still cached;
`finish` hands them to the checkpoint's manifest, which need not read the files again), its pages
dropped from the cache (common.atomic.drop_cached), and only then is its index written. A killed
run, or a crashed machine, thus leaves finished groups that a rerun keeps (`has`, which also
checks the data the index points at is there) and unfinished ones, whose files it rewrites. torch's own per-record CRC is not computed: torch.load never checks it,
and the manifest's covers every byte.
Call inside a process group (convert.process_group.single_process_group): megatron-core asks
for the rank while translating.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import pickle
import re
import uuid
from pathlib import Path
from typing import Optional

import torch

from megactllm.checkpoint.manifest import crc32_file
from megactllm.common.atomic import drop_cached, fsync_path, write_bytes_atomic
from megactllm.convert.errors import ConversionError

_GROUP_NAME = re.compile(r"^[a-z0-9]+$")
INDEX_SUFFIX = ".index"


def _group_writer_class():
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import _StoragePrefix

    class GroupWriter(FileSystemWriter):
        """torch's writer with a file prefix of our own and the index kept (`index`), not written as `.metadata`."""

        def __init__(self, path: Path, prefix: str):
            # No fsync here: the group's sealing thread syncs its files while the next group is built.
            super().__init__(str(path), single_file_per_rank=True, sync_files=False, thread_count=1, overwrite=True)
            self.prefix, self.index = prefix, None

        def prepare_local_plan(self, plan):
            Path(self.path).mkdir(parents=True, exist_ok=True)
            return dataclasses.replace(plan, storage_data=_StoragePrefix(self.prefix))

        def prepare_global_plan(self, plans):
            return [dataclasses.replace(p, storage_data=_StoragePrefix(self.prefix)) for p in plans]

        def finish(self, metadata, results) -> None:
            metadata.storage_data = {wr.index: wr.storage_data for wrs in results for wr in wrs}
            self.index = metadata

    return GroupWriter


@contextlib.contextmanager
def _without_torch_record_crc():
    """torch.save without its per-record CRC-32 (torch.load never checks it; the manifest's covers the files)."""
    try:
        from torch.utils.serialization import config
    except ImportError:  # torch before 2.6 always computes it
        yield
        return
    before = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        yield
    finally:
        config.save.compute_crc32 = before


class Concatenation:
    """A parameter left unfilled (`placeholder`) whose value is `parts` laid end to end (a fused
    gate/up projection). A chunk megatron-core cuts that is exactly one part is written from the
    part itself: no concatenated copy, and no second copy by torch's writer, which copies any view
    of a larger storage. A chunk of any other shape fills the placeholder first."""

    def __init__(self, placeholder: torch.Tensor, parts: list[torch.Tensor]):
        if sum(p.numel() for p in parts) != placeholder.numel():
            raise ValueError("the parts do not make up the placeholder")
        self.placeholder, self.parts, self.filled = placeholder, parts, False

    def storage(self) -> int:
        return self.placeholder.untyped_storage().data_ptr()

    def resolve(self, view: torch.Tensor) -> torch.Tensor:
        """The tensor to write for `view`, a view of the placeholder."""
        if view.is_contiguous():
            start = self.placeholder.storage_offset()
            for part in self.parts:
                if view.storage_offset() == start and view.numel() == part.numel() and view.dtype == part.dtype:
                    return part.reshape(view.shape)
                start += part.numel()
        if not self.filled:
            torch.cat([p.reshape(-1) for p in self.parts], out=self.placeholder.view(-1))
            self.filled = True
        return view


class DistCheckpointWriter:
    """Groups of megatron ShardedTensors/ShardedObjects -> one dist_checkpointing directory.

        with DistCheckpointWriter(run / "model", progress_dir) as writer:
            for name, build in groups:
                if not writer.has(name):
                    writer.write(name, build())  # a sharded state dict of that group only
        files = writer.finish(names)             # {file: [size, crc32]} for the manifest
    """

    def __init__(self, model_dir: str | os.PathLike, index_dir: str | os.PathLike):
        self.model_dir, self.index_dir = Path(model_dir), Path(index_dir)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.index_dir.mkdir(parents=True, exist_ok=True)
        self._sealer: Optional[concurrent.futures.ThreadPoolExecutor] = None  # started by the first write
        self._sealing: list[concurrent.futures.Future] = []

    def __enter__(self) -> "DistCheckpointWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self.wait()
        except Exception:
            if exc_type is None:
                raise  # else the error already on its way out is the one to report

    def wait(self) -> None:
        """Until every group written so far is sealed (raises what sealing raised)."""
        try:
            for future in self._sealing:
                future.result()
        finally:
            self._sealing.clear()

    def _index(self, group: str) -> Path:
        return self.index_dir / f"{group}{INDEX_SUFFIX}"

    def has(self, group: str) -> bool:
        """Whether an earlier run finished `group`: its index is there and so is all the data it indexes."""
        path = self._index(group)
        if not path.is_file():
            return False
        try:
            index = pickle.loads(path.read_bytes())["index"]
            ends: dict[str, int] = {}
            for info in index.storage_data.values():
                ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
            if all((self.model_dir / name).stat().st_size >= end for name, end in ends.items()):
                return True
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, KeyError, TypeError):
            pass
        path.unlink()  # torn by a crash of the machine: the group is redone
        return False

    def write(self, group: str, sharded_state_dict: dict, concatenations: tuple = ()) -> None:
        """Write one group; `concatenations` are the group's parameters left for their parts to fill."""
        from megatron.core.dist_checkpointing.state_dict_utils import save_preprocess
        from megatron.core.dist_checkpointing.strategies.torch import (
            MCoreSavePlanner,
            _replace_state_dict_keys_with_sharded_keys,
            mcore_to_pyt_state_dict,
        )
        from torch.distributed.checkpoint import state_dict_saver

        if not _GROUP_NAME.match(group):
            raise ValueError(f"group name {group!r}: lower-case letters and digits only (it names files)")
        prefix = f"__{group}_"
        for stale in self.model_dir.glob(f"{prefix}*"):  # an unfinished earlier attempt at this group
            stale.unlink()
        sharded, common = save_preprocess(sharded_state_dict, validate_access_integrity=False)
        if common:
            raise ConversionError(f"group {group}: unexpected non-sharded state {sorted(common)} (megatron-core changed?)")
        flat, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded, keep_only_main_replica=True)
        by_storage = {c.storage(): c for c in concatenations}
        flat = {key: [_without_prepended_axes(_resolved(item, by_storage)) for item in items] for key, items in flat.items()}
        writer = _group_writer_class()(self.model_dir, prefix)
        with _without_torch_record_crc():
            state_dict_saver.save(mcore_to_pyt_state_dict(flat, False), storage_writer=writer,
                                  planner=MCoreSavePlanner(flatten_state_dict=False), no_dist=True)
        files = sorted(self.model_dir.glob(f"{prefix}*"))
        if self._sealer is None:
            self._sealer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="seal-group")
        self._sealing.append(self._sealer.submit(self._seal, group, writer.index, files))

    def _seal(self, group: str, index, files: list[Path]) -> None:
        """Make the group durable, then record it done: fsync, checksum, then its index."""
        checksums = {}
        for path in files:
            fsync_path(path)
            checksums[path.name] = [path.stat().st_size, crc32_file(path)]
            drop_cached(path)
        write_bytes_atomic(self._index(group), pickle.dumps({"index": index, "files": checksums}))

    def finish(self, groups: list[str]) -> dict[str, list]:
        """Merge the groups' indexes into `.metadata`, then megatron's common.pt and metadata.json.

        Returns {file name: [size, crc32]} of the groups' data files, as the sealing found them."""
        from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
        from megatron.core.dist_checkpointing.strategies.common import TorchCommonSaveStrategy
        from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

        self.wait()
        merged = Metadata(state_dict_metadata={}, planner_data=None, storage_data={})
        checksums: dict[str, list] = {}
        for group in groups:
            sealed = pickle.loads(self._index(group).read_bytes())
            part = sealed["index"]
            checksums.update(sealed["files"])
            merged.version = part.version
            for fqn, item in part.state_dict_metadata.items():
                have = merged.state_dict_metadata.get(fqn)
                if have is None:
                    merged.state_dict_metadata[fqn] = item
                elif isinstance(item, TensorStorageMetadata) and isinstance(have, TensorStorageMetadata):
                    if have.size != item.size or have.properties.dtype != item.properties.dtype:
                        raise ConversionError(f"{fqn}: groups disagree on its shape or dtype ({have.size} vs {item.size})")
                    have.chunks.extend(item.chunks)
                else:
                    raise ConversionError(f"{fqn} is written by two groups")
            merged.storage_data.update(part.storage_data)
        for item in merged.state_dict_metadata.values():
            if isinstance(item, TensorStorageMetadata):
                item.chunks.sort(key=lambda c: tuple(c.offsets))
        merged.storage_meta = StorageMeta(checkpoint_id=str(self.model_dir), save_id=str(uuid.uuid4()))
        write_bytes_atomic(self.model_dir / ".metadata", pickle.dumps(merged))
        TorchCommonSaveStrategy("torch", 1).save_common({}, self.model_dir)
        save_config(CheckpointingConfig("torch_dist", 1), str(self.model_dir))
        if self._sealer is not None:
            self._sealer.shutdown()
        return checksums


def _resolved(item, concatenations: dict):
    """A ShardedTensor over a Concatenation's placeholder, with the data its chunk should hold."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    if not isinstance(item, ShardedTensor) or not concatenations:
        return item
    owner = concatenations.get(item.data.untyped_storage().data_ptr())
    return item if owner is None else dataclasses.replace(item, data=owner.resolve(item.data))


def _without_prepended_axes(item):
    """A layer's tensor with its layer axis as a real axis of size 1 (the same chunk on disk).

    megatron-core turns a tensor with prepended axes into a torch ShardedTensor that must list
    every layer's chunk as local in a world of one process, so one layer alone cannot be saved
    that way; viewed with the axis made real it is saved as the chunk (i, 0, ...) of size
    (1, ...) that the whole model's save writes, through megatron's CheckpointableShardedTensor.
    """
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    if not isinstance(item, ShardedTensor) or not item.prepend_axis_num:
        return item
    ones = (1,) * item.prepend_axis_num
    shape = ones + tuple(item.local_shape)
    return dataclasses.replace(item, data=item.data.reshape(shape), local_shape=shape, prepend_axis_num=0)


def sharded_tensor(key: str, tensor: torch.Tensor, tp_axis=None, **kwargs):
    """A whole (TP1) tensor as megatron-core's embedding / norm / output layer declare it."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    offsets = [(tp_axis, 0, 1)] if tp_axis is not None else []
    return ShardedTensor.from_rank_offsets(key, tensor, *offsets, replica_id=0, **kwargs)
