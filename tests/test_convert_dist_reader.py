"""convert.dist_reader: tensors read from a dist_checkpointing directory by mapping torch.save's
records are the ones torch.load and megatron-core's own load give, whole, across chunks and for
any region; records of another form fall back to torch.load; an export of a checkpoint whose
bytes changed is refused by the background checksums, and a group is marked done only after its
shards are synced."""
from __future__ import annotations

import io

import pytest
import torch

from megactllm.convert.dist_reader import DistCheckpointFiles, _loaded_record, _mapped_record, _OtherFormat
from megactllm.convert.process_group import single_process_group


def _record_file(tmp_path, obj, junk=37, crc=True):
    """torch.save's bytes of `obj` inside a file, after `junk` other bytes (as records lie in a .distcp);
    crc=False as the importer's writer saves them."""
    from torch.utils.serialization import config

    buffer = io.BytesIO()
    config.save.compute_crc32 = crc
    try:
        torch.save(obj, buffer)
    finally:
        config.save.compute_crc32 = True
    path = tmp_path / "records.distcp"
    path.write_bytes(b"x" * junk + buffer.getvalue() + b"y" * 11)
    return path, junk, len(buffer.getvalue())


@pytest.mark.parametrize("make", [
    lambda: torch.randn(5, 7),
    lambda: torch.randn(7, 5).t(),                        # strides of a transpose, storage exactly the tensor
    lambda: torch.randn(3, 4, 6).to(torch.bfloat16),
    lambda: torch.arange(10, dtype=torch.int64),
    lambda: torch.randn(1, 9, 2).to(torch.float16),
    lambda: torch.randn(8)[2:6],                          # a view into a larger storage, at an offset
    lambda: torch.tensor(3.5),                            # no dimensions
], ids=["f32", "transposed", "bf16", "int64", "f16", "offset-view", "scalar"])
@pytest.mark.parametrize("crc", [True, False], ids=["crc", "no-crc"])
def test_a_mapped_record_is_what_torch_load_reads(tmp_path, make, crc):
    tensor = make()
    path, start, length = _record_file(tmp_path, tensor, crc=crc)
    mapped = _mapped_record(path, start, length, tensor.dtype)
    assert mapped.dtype == tensor.dtype and mapped.shape == tensor.shape and mapped.stride() == tensor.stride()
    assert torch.equal(mapped, tensor)
    assert torch.equal(mapped, _loaded_record(path, start, length))
    mapped.add_(1)  # private: the file does not change
    assert torch.equal(_loaded_record(path, start, length), tensor)


def test_a_record_of_another_form_is_left_to_torch_load(tmp_path):
    parameter = torch.nn.Parameter(torch.randn(4, 3))
    path, start, length = _record_file(tmp_path, parameter)
    with pytest.raises(_OtherFormat):
        _mapped_record(path, start, length, torch.float32)
    assert torch.equal(_loaded_record(path, start, length), parameter.detach())


def _save_chunked(directory, full: torch.Tensor):
    """`full` saved as three row chunks of one key (what TP3 writes), in two groups' files, plus a
    tensor stacked over 4 layers saved whole: through megatron-core's translation (DistCheckpointWriter)."""
    from megactllm.convert.dist_writer import DistCheckpointWriter, sharded_tensor
    from megatron.core.dist_checkpointing import ShardedTensor

    rows = full.shape[0] // 3
    part = {i: ShardedTensor.from_rank_offsets("w", full[i * rows:(i + 1) * rows].clone(), (0, i, 3), replica_id=0)
            for i in range(3)}
    with DistCheckpointWriter(directory, directory.parent / "groups") as writer:
        writer.write("first", {"a": part[0], "stacked": sharded_tensor("layers", torch.arange(24.0).reshape(4, 3, 2))})
        writer.write("rest", {"b": part[1], "c": part[2]})
    writer.finish(["first", "rest"])


def test_regions_across_chunks_equal_megatron_cores_own_load(tmp_path):
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    full = torch.randn(12, 5).to(torch.bfloat16)
    with single_process_group():
        _save_chunked(tmp_path / "ckpt", full)
        theirs = dist_checkpointing.load(
            {"w": ShardedTensor.from_rank_offsets("w", torch.empty(12, 5, dtype=torch.bfloat16), replica_id=0)},
            str(tmp_path / "ckpt"))["w"]
    files = DistCheckpointFiles(tmp_path / "ckpt")
    assert torch.equal(files.read("w"), full) and torch.equal(theirs, full)
    assert torch.equal(files.read("w", (4,), (4,)), full[4:8])      # exactly one chunk
    assert torch.equal(files.read("w", (2,), (7,)), full[2:9])      # across three chunks
    stacked = torch.arange(24.0).reshape(4, 3, 2)
    assert torch.equal(files.read("layers", (2,), (1,))[0], stacked[2])
    assert torch.equal(files.read("layers"), stacked)


def test_the_importers_records_are_mapped_not_loaded(tmp_path, monkeypatch):
    """Every tensor chunk the importer writes takes the mapped path (torch.load is the fallback only)."""
    from test_convert_stream import _hf_dir

    import megactllm.convert.dist_reader as dist_reader
    from megactllm.convert import import_from_hf

    checkpoint = import_from_hf(_hf_dir(tmp_path, "qwen3", layers=2), tmp_path / "ckpt", progress_stream=None).checkpoint

    def no_fallback(*args):
        raise AssertionError("a record fell back to torch.load")

    monkeypatch.setattr(dist_reader, "_loaded_record", no_fallback)
    files = DistCheckpointFiles(checkpoint / "model")
    for key in files.metadata.state_dict_metadata:
        if key in {k for k, _ in files._storage}:
            assert files.read(key).numel() > 0


def test_export_of_a_checkpoint_with_changed_bytes_is_refused_and_leaves_nothing(tmp_path):
    from test_convert_stream import _hf_dir

    from megactllm.convert import export_to_hf, import_from_hf
    from megactllm.convert.errors import ConversionError

    checkpoint = import_from_hf(_hf_dir(tmp_path, "qwen2", layers=2), tmp_path / "ckpt", progress_stream=None).checkpoint
    shard = max((checkpoint / "model").glob("*.distcp"), key=lambda p: p.stat().st_size)
    with open(shard, "r+b") as f:  # a flipped bit inside tensor data: every read still succeeds
        f.seek(shard.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    out = tmp_path / "hf"
    with pytest.raises(ConversionError, match=f"model/{shard.name} has changed bytes"):
        export_to_hf(checkpoint, out, progress_stream=None)
    assert not out.exists() and not (tmp_path / "hf.resume").exists()

    with open(shard, "r+b") as f:  # the zip directory at the record's end: the read fails, the checksum names why
        f.seek(shard.stat().st_size - 64)
        f.write(b"\xff" * 8)
    with pytest.raises(ConversionError, match=f"model/{shard.name} has changed bytes"):
        export_to_hf(checkpoint, out, progress_stream=None)


def test_an_export_group_is_marked_done_only_after_its_shards_are_synced(tmp_path, monkeypatch):
    from test_convert_stream import _hf_dir

    from megactllm.convert import export_to_hf, import_from_hf
    from megactllm.convert.safetensors_io import PlannedSafetensorsFiles

    checkpoint = import_from_hf(_hf_dir(tmp_path, "llama3", layers=3, dtype=torch.bfloat16), tmp_path / "ckpt",
                                progress_stream=None).checkpoint
    export_to_hf(checkpoint, tmp_path / "reference", max_shard_bytes=300 * 2**10, progress_stream=None)
    real_sync, synced = PlannedSafetensorsFiles.sync, []

    def crash_on_the_third_group(self, indexes):
        if len(synced) == 2:
            raise OSError("the machine went down before these shards reached the disk")
        real_sync(self, indexes)
        synced.append(sorted(indexes))

    monkeypatch.setattr(PlannedSafetensorsFiles, "sync", crash_on_the_third_group)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="went down"):
        export_to_hf(checkpoint, out, max_shard_bytes=300 * 2**10, progress_stream=None)
    done = sorted(p.name for p in (tmp_path / "out.resume" / ".groups").iterdir())
    assert done == ["embedding", "head"], "only groups whose shards were synced are marked done"
    monkeypatch.setattr(PlannedSafetensorsFiles, "sync", real_sync)
    export_to_hf(checkpoint, out, max_shard_bytes=300 * 2**10, progress_stream=None)
    for path in (tmp_path / "reference").iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name


def test_a_checkpoint_of_the_previous_release_reads_as_megatron_core_loads_it():
    """Records megatron-core's training save wrote (format 1, by commit 2c88b3a): mapped, equal to its own load."""
    from pathlib import Path

    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    model_dir = Path(__file__).parent / "data" / "checkpoints" / "format1_2c88b3a" / "ckpt" / "iter_0000002" / "model"
    files = DistCheckpointFiles(model_dir)
    keys = {key for key, _ in files._storage}
    assert any("linear_fc1" in key for key in keys) and "embedding.word_embeddings.weight" in keys
    with single_process_group():
        for key in sorted(keys):
            meta = files.metadata.state_dict_metadata[key]
            target = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
            theirs = dist_checkpointing.load({key: ShardedTensor.from_rank_offsets(key, target, replica_id=0)},
                                             str(model_dir))[key]
            assert torch.equal(files.read(key), theirs), key
