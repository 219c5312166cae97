"""Streamed conversion (issue 34): the import written a layer at a time is the checkpoint the whole
model's save wrote (every tensor, key, chunk and file-level metadata), for every family (the MoE
ones too: per-expert tensors, Qwen3-MoE's dense first layer saved under its own keys), from HF
shards that split layers; export gives every HF tensor back bit for bit; a killed import rerun
(in worker processes) finishes with the same checkpoint and never leaves a complete-looking one.
Memory against depth is measured by bench/convert.py, not here."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from convert_testing import read_hf_weights
from family_testing import FAMILY_MODELS, tiny_hf_model
from moe_testing import MOE_MODELS, tiny_moe_model

from megactllm.checkpoint import Checkpointer
from megactllm.convert import export_to_hf, import_from_hf
from megactllm.convert.dist_writer import DistCheckpointWriter
from megactllm.convert.errors import ConversionError
from megactllm.convert.megatron_reader import MegatronCheckpointReader
from megactllm.convert.process_group import single_process_group

VOCAB = 320


def _word_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(VOCAB - 1)}
    vocab["<|endoftext|>"] = VOCAB - 1
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer.save(str(path))


def _hf_dir(root, family, layers=3, dtype=torch.float32):
    """A tiny model of the family saved in shards small enough that each layer spans several."""
    make = tiny_moe_model if family in MOE_MODELS else tiny_hf_model
    model = make(family, VOCAB, num_hidden_layers=layers).to(dtype)
    out = root / f"hf-{family}"
    model.save_pretrained(out, max_shard_size="200KB" if family in FAMILY_MODELS else "20KB")
    _word_tokenizer(out / "tokenizer.json")
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    layer0 = {f for name, f in weight_map.items() if name.startswith("model.layers.0.")}
    assert len(layer0) > 1, "the fixture must split a layer across shards"
    return out


def _tensors(checkpoint) -> dict:
    """Every tensor as megatron-core's own load gives it (not our reader: an independent reference)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    with single_process_group():
        stored = MegatronCheckpointReader(checkpoint).tensors
        request = {key: ShardedTensor.from_rank_offsets(key, torch.empty(info.global_shape, dtype=info.dtype),
                                                        replica_id=0) for key, info in stored.items()}
        return dist_checkpointing.load(request, str(checkpoint / "model"))


def _layout(checkpoint) -> dict:
    """Key -> (kind, global shape, dtype, chunks) of the dist_checkpointing index, and the model files."""
    model_dir = checkpoint / "model"
    metadata = pickle.loads((model_dir / ".metadata").read_bytes())
    out = {}
    for key, item in metadata.state_dict_metadata.items():
        chunks = sorted((tuple(c.offsets), tuple(c.sizes)) for c in getattr(item, "chunks", []))
        props = getattr(item, "properties", None)
        out[key] = (type(item).__name__, tuple(getattr(item, "size", ()) or ()), str(props and props.dtype), chunks)
    out["common.pt"] = torch.load(model_dir / "common.pt", weights_only=False)
    out["metadata.json"] = json.loads((model_dir / "metadata.json").read_text())
    return out


def _same_checkpoint(a, b) -> None:
    assert _layout(a) == _layout(b)
    left, right = _tensors(a), _tensors(b)
    assert sorted(left) == sorted(right)
    for key in left:
        assert left[key].dtype == right[key].dtype and torch.equal(left[key], right[key]), key
    # The same metadata; the manifests list each one's own files (names differ), and each verifies.
    meta_a = json.loads((a / "megactllm.json").read_text())
    meta_b = json.loads((b / "megactllm.json").read_text())
    assert {k: v for k, v in meta_a.items() if k != "manifest"} == {k: v for k, v in meta_b.items() if k != "manifest"}
    for checkpoint in (a, b):
        verification = Checkpointer.verify(checkpoint)
        assert verification.ok and verification.manifest, verification.summary()
    assert sorted(p.name for p in (a / "tokenizer").iterdir()) == sorted(p.name for p in (b / "tokenizer").iterdir())


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS) + sorted(MOE_MODELS))
def test_streamed_import_is_the_whole_model_save_and_round_trips(tmp_path, family):
    hf = _hf_dir(tmp_path, family)
    streamed = import_from_hf(hf, tmp_path / "streamed", progress_stream=None)
    whole = import_from_hf(hf, tmp_path / "whole", progress_stream=None, spec="local-whole")
    _same_checkpoint(streamed.checkpoint, whole.checkpoint)
    assert not list(tmp_path.glob("streamed.*")), "no staging directory is left behind"

    export_to_hf(streamed.checkpoint, tmp_path / "out", max_shard_bytes=300 * 2**10, progress_stream=None)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    before, after = read_hf_weights(hf), read_hf_weights(tmp_path / "out")
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].dtype == after[name].dtype and torch.equal(before[name], after[name]), name


def test_killed_import_reruns_to_the_same_checkpoint(tmp_path, monkeypatch):
    hf = _hf_dir(tmp_path, "qwen2", layers=4, dtype=torch.bfloat16)
    reference = import_from_hf(hf, tmp_path / "reference", progress_stream=None)

    out = tmp_path / "ckpt"
    real_write, written = DistCheckpointWriter.write, []

    def dies_after_two(self, group, *state):
        if len(written) == 2:
            # What a kill leaves: the group's data file half written and no index for it.
            (self.model_dir / f"__{group}_0.distcp").write_bytes(b"torn")
            raise KeyboardInterrupt("killed")
        real_write(self, group, *state)
        written.append(group)

    monkeypatch.setattr(DistCheckpointWriter, "write", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        import_from_hf(hf, out, progress_stream=None)
    assert not out.exists(), "a killed import must not leave a directory that looks complete"
    staging = tmp_path / "ckpt.resume"
    assert sorted(p.name for p in (staging / ".groups").iterdir()) == ["embedding.index", "head.index"]
    monkeypatch.setattr(DistCheckpointWriter, "write", real_write)

    # The rerun keeps the two finished groups, redoes the torn one, and runs layers in 2 processes.
    resumed = import_from_hf(hf, out, progress_stream=None, workers=2)
    assert not staging.exists()
    _same_checkpoint(resumed.checkpoint, reference.checkpoint)


def test_a_group_is_recorded_done_only_after_its_data_is_on_disk(tmp_path, monkeypatch):
    """A machine that crashes loses what was not fsynced: a group's index is written only after
    its files are synced, so a rerun redoes a group whose sealing did not finish."""
    hf = _hf_dir(tmp_path, "qwen2", layers=3, dtype=torch.bfloat16)
    reference = import_from_hf(hf, tmp_path / "reference", progress_stream=None)
    import megactllm.convert.dist_writer as dist_writer

    real_fsync, order = dist_writer.fsync_path, []

    def crash_on_second_layer(path):
        if path.name.startswith("__layer000001_"):
            raise OSError("the machine went down before this file reached the disk")
        order.append(("fsync", path.name))
        real_fsync(path)

    real_index = DistCheckpointWriter._index

    def index(self, group):
        order.append(("index", group))
        return real_index(self, group)

    monkeypatch.setattr(dist_writer, "fsync_path", crash_on_second_layer)
    monkeypatch.setattr(DistCheckpointWriter, "_index", index)
    with pytest.raises(OSError, match="went down"):
        import_from_hf(hf, tmp_path / "ckpt", progress_stream=None)
    staging = tmp_path / "ckpt.resume"
    assert not (staging / ".groups" / "layer000001.index").exists()
    fsynced = [i for i, (what, name) in enumerate(order) if what == "fsync" and name.startswith("__layer000000_")]
    indexed = [i for i, (what, name) in enumerate(order) if what == "index" and name == "layer000000"]
    assert fsynced and indexed and max(fsynced) < max(indexed), "layer 0's index was written before its data was synced"

    monkeypatch.setattr(dist_writer, "fsync_path", real_fsync)
    monkeypatch.setattr(DistCheckpointWriter, "_index", real_index)
    resumed = import_from_hf(hf, tmp_path / "ckpt", progress_stream=None)
    _same_checkpoint(resumed.checkpoint, reference.checkpoint)


def test_a_staging_directory_of_another_input_is_not_continued(tmp_path):
    hf = _hf_dir(tmp_path, "llama3", layers=2)
    staging = tmp_path / "ckpt.resume"
    (staging / ".groups").mkdir(parents=True)
    (staging / ".groups" / "embedding.index").write_bytes(b"from another model")
    (staging / ".conversion-plan.json").write_text("{}")
    imported = import_from_hf(hf, tmp_path / "ckpt", progress_stream=None)
    assert _tensors(imported.checkpoint)  # readable: the stale index was discarded, not merged
    with pytest.raises(ConversionError, match="workers=0"):
        import_from_hf(hf, tmp_path / "other", progress_stream=None, workers=0)


def test_killed_export_reruns_to_the_same_files(tmp_path, monkeypatch):
    from megactllm.convert import export as export_module

    hf = _hf_dir(tmp_path, "mistral", layers=4, dtype=torch.bfloat16)
    checkpoint = import_from_hf(hf, tmp_path / "ckpt", progress_stream=None).checkpoint
    export_to_hf(checkpoint, tmp_path / "reference", max_shard_bytes=300 * 2**10, progress_stream=None)

    real_groups, seen = export_module.hf_group_tensors, []

    def dies_in_the_third_group(reader, group, dtype):
        seen.append(group)
        for i, item in enumerate(real_groups(reader, group, dtype)):
            if len(seen) == 3 and i == 1:
                raise KeyboardInterrupt("killed")  # mid-group: some of its tensors are already in the shards
            yield item

    monkeypatch.setattr(export_module, "hf_group_tensors", dies_in_the_third_group)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        export_to_hf(checkpoint, out, max_shard_bytes=300 * 2**10, progress_stream=None)
    assert not out.exists() and not (tmp_path / "out.resume" / "config.json").exists()
    assert sorted(p.name for p in (tmp_path / "out.resume" / ".groups").iterdir()) == ["embedding", "head"]
    monkeypatch.setattr(export_module, "hf_group_tensors", real_groups)

    export_to_hf(checkpoint, out, max_shard_bytes=300 * 2**10, progress_stream=None, workers=2)
    reference = sorted(p.name for p in (tmp_path / "reference").iterdir())
    assert sorted(p.name for p in out.iterdir()) == reference
    for name in reference:
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


def test_a_fused_parameter_is_written_from_its_parts_or_filled_when_cut_otherwise():
    from megactllm.convert.dist_writer import Concatenation

    gate, up = torch.randn(4, 3), torch.randn(4, 3)
    placeholder = torch.empty(8, 3)
    fused = Concatenation(placeholder, [gate, up])
    top, bottom = placeholder.chunk(2)
    assert fused.resolve(bottom).data_ptr() == up.data_ptr() and fused.resolve(top).data_ptr() == gate.data_ptr()
    assert not fused.filled, "chunks that are parts need no concatenated copy"
    middle = placeholder[2:6]  # a cut across both parts (another layout): the placeholder is filled first
    assert torch.equal(fused.resolve(middle), torch.cat([gate, up])[2:6]) and fused.filled
