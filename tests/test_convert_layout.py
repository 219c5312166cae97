"""The HF <-> megatron tensor layout, safetensors streaming I/O, HF config mapping, atomic output."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from megactllm.config import ModelConfig
from megactllm.convert import ConversionError, layout
from megactllm.convert.atomic import atomic_output_dir
from megactllm.convert.hf_config import hf_config_from_model, model_config_from_hf
from megactllm.convert.safetensors_io import (
    INDEX_FILE,
    SafetensorsCheckpoint,
    PlannedSafetensorsFiles,
    TensorSpec,
)


def _rows(model: ModelConfig, n_rows: int, tag: int) -> torch.Tensor:
    """Rows whose first column names the row (tag*1000 + index), hidden size 2."""
    return torch.stack([torch.tensor([tag * 1000 + i, 0.0]) for i in range(n_rows)])


def test_fused_qkv_interleaves_heads_by_query_group():
    # 4 query heads in 2 groups, head dim 1: megatron wants [q0 q1 k0 v0 | q2 q3 k1 v1].
    model = ModelConfig(hidden_size=2, num_attention_heads=4, num_query_groups=2, kv_channels=1)
    q, k, v = _rows(model, 4, 1), _rows(model, 2, 2), _rows(model, 2, 3)
    fused = layout.fuse_qkv(q, k, v, model)
    assert fused[:, 0].tolist() == [1000, 1001, 2000, 3000, 1002, 1003, 2001, 3001]
    for original, back in zip((q, k, v), layout.split_qkv(fused, model), strict=True):
        assert torch.equal(original, back)


@pytest.mark.parametrize("heads,groups,head_dim", [(4, None, 16), (8, 2, 8), (8, 1, 4), (6, 3, 10)])
def test_qkv_round_trip(heads, groups, head_dim):
    model = ModelConfig(hidden_size=24, num_attention_heads=heads, num_query_groups=groups, kv_channels=head_dim)
    kv_rows = (groups or heads) * head_dim
    q, k, v = torch.randn(heads * head_dim, 24), torch.randn(kv_rows, 24), torch.randn(kv_rows, 24)
    fused = layout.fuse_qkv(q, k, v, model)
    assert fused.shape == layout.Shapes(model).megatron_layer(layout.QKV)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), layout.split_qkv(fused, model), strict=True))


def test_gate_up_are_the_two_halves_of_fc1():
    gate, up = torch.randn(5, 3), torch.randn(5, 3)
    fc1 = layout.fuse_gate_up(gate, up)
    assert torch.equal(fc1[:5], gate) and torch.equal(fc1[5:], up)
    assert all(torch.equal(a, b) for a, b in zip((gate, up), layout.split_gate_up(fc1), strict=True))


def test_vocab_padding_adds_zero_rows():
    rows = torch.randn(300, 4)
    padded = layout.pad_vocab(rows, 384)
    assert padded.shape == (384, 4) and torch.equal(padded[:300], rows) and not padded[300:].any()
    with pytest.raises(ValueError):
        layout.pad_vocab(rows, 256)


def test_sharded_writer_is_read_by_safetensors_and_by_our_reader(tmp_path):
    tensors = {
        "a": torch.randn(10, 10),
        "b": torch.randn(3).to(torch.bfloat16),
        "big": torch.randn(40, 10),  # larger than a shard: gets a shard of its own
        "c": torch.arange(7, dtype=torch.int64),
    }
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    writer = PlannedSafetensorsFiles(tmp_path, specs, max_shard_bytes=600)
    writer.create()
    for name, tensor in reversed(tensors.items()):  # any order: every offset is planned
        writer.write(name, tensor)
    writer.sync_all()
    files = writer.write_index()
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert len(files) == 4 and index["metadata"]["total_size"] == sum(s.nbytes for s in specs)
    assert index["weight_map"]["big"] != index["weight_map"]["a"]
    loaded = {}
    for shard in set(index["weight_map"].values()):
        loaded.update(load_file(tmp_path / shard))  # the reference implementation reads our files
    ours = SafetensorsCheckpoint(tmp_path)
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor) and torch.equal(ours.read(name), tensor)


def test_writer_refuses_tensors_out_of_plan(tmp_path):
    writer = PlannedSafetensorsFiles(tmp_path, [TensorSpec("a", (2,), torch.float32)], max_shard_bytes=100)
    writer.create()
    with pytest.raises(ValueError, match="plan expects"):
        writer.write("a", torch.zeros(3))
    with pytest.raises(ValueError, match="was not planned"):
        writer.write("b", torch.zeros(2))
    writer.close()


def test_reader_names_missing_and_truncated_shards(tmp_path):
    save_file({"x": torch.randn(64, 64)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"y": torch.randn(64, 64)}, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}
    (tmp_path / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert torch.equal(SafetensorsCheckpoint(tmp_path).read("y"), load_file(tmp_path / weight_map["y"])["y"])

    second = tmp_path / weight_map["y"]
    data = second.read_bytes()
    second.write_bytes(data[: len(data) - 100])
    with pytest.raises(ConversionError, match=r"model-00002-of-00002\.safetensors is truncated"):
        SafetensorsCheckpoint(tmp_path)
    second.unlink()
    with pytest.raises(ConversionError, match=r"model-00002-of-00002\.safetensors is missing"):
        SafetensorsCheckpoint(tmp_path)


def test_hf_config_round_trip_and_refusals():
    model = ModelConfig(num_layers=3, hidden_size=64, ffn_hidden_size=160, num_attention_heads=4, num_query_groups=2,
                        kv_channels=32, vocab_size=333, max_position_embeddings=256, seq_length=256,
                        rotary_base=500000.0, norm_epsilon=1e-6, tie_word_embeddings=True)
    hf = hf_config_from_model(model, torch.bfloat16, bos_token_id=1, eos_token_id=2)
    assert model_config_from_hf(hf, "config.json") == model
    with pytest.raises(ConversionError, match="somewhere/config.json: architecture.*MistralForCausalLM"):
        model_config_from_hf({**hf, "architectures": ["MistralForCausalLM"]}, "somewhere/config.json")
    with pytest.raises(ConversionError, match="RoPE scaling 'llama3'"):
        model_config_from_hf({**hf, "rope_parameters": {"rope_type": "llama3", "rope_theta": 1.0}}, "config.json")
    with pytest.raises(ConversionError, match="attention_bias"):
        model_config_from_hf({**hf, "attention_bias": True}, "config.json")


def test_transformers_reads_our_config(tmp_path):
    from transformers import AutoConfig

    model = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=1, vocab_size=500,
                        rotary_base=250000.0, norm_epsilon=1e-6)
    (tmp_path / "config.json").write_text(json.dumps(hf_config_from_model(model, torch.float32)))
    config = AutoConfig.from_pretrained(tmp_path, local_files_only=True)
    assert config.num_key_value_heads == 1 and config.rms_norm_eps == 1e-6
    assert config.rope_parameters["rope_theta"] == 250000.0


def test_atomic_output_dir_publishes_only_complete_directories(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as staging:
            (staging / "half.txt").write_text("x")
            raise RuntimeError("interrupted")
    assert not out.exists() and not list(tmp_path.iterdir())

    # A hard kill (no cleanup can run) leaves only a .partial-<pid> directory, never `out`.
    code = (
        "import os, signal, sys\n"
        "from megactllm.convert.atomic import atomic_output_dir\n"
        "with atomic_output_dir(sys.argv[1]) as d:\n"
        "    (d / 'weights').write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)])
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and [p.name.startswith("out.partial-") for p in tmp_path.iterdir()] == [True]

    with atomic_output_dir(out) as staging:  # the next run removes the dead run's leftovers
        (staging / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(ConversionError, match="already exists"):
        with atomic_output_dir(out):
            pass
    with atomic_output_dir(out, overwrite=True) as staging:
        (staging / "new.json").write_text("{}")
    assert os.listdir(out) == ["new.json"]
