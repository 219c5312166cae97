"""Checkpoints in Transformer Engine's naming convert and load, with the local-spec logit parity.

No TE on CPU, so the TE checkpoint is written as TE's layer spec would write it, from a local-spec
model (TP=2, GQA): module paths renamed to TE's (`linear_qkv.layer_norm_weight`,
`linear_fc1.layer_norm_weight`), every TE linear's `_extra_state` holding FP8 scaling metadata
serialised the way TE does, and TEDotProductAttention's `core_attention._extra_state`, all made
with megatron-core's own make_sharded_object_for_checkpoint (what TE modules' sharded_state_dict
calls). Then:
- the TE checkpoint exports to HF with the model's logits, and loads into the local spec;
- a checkpoint with no extra state at all (another tool's) loads; one missing a weight is refused;
- an HF import loads into a request shaped like TE's model (its extra state kept fresh), with the
  weights the local spec loads; the importer maps TE's parameter names to the same HF tensors.
"""
import io

import pytest
import torch
from convert_testing import SEQ, hf_logits, megactllm_logits, tiny_config, tiny_hf_llama, train_tiny_sentencepiece

from megactllm.convert import export_to_hf, import_from_hf
from megactllm.testing import run_distributed

VOCAB = 300
TOLERANCE = 1e-4
TE_PATHS = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
            "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}


def _fp8_extra_state(seed: int) -> torch.Tensor:
    """TE's serialised extra state: a pickled dict of FP8 scaling tensors as a uint8 tensor."""
    g = torch.Generator().manual_seed(seed)
    meta = {"scale_fwd": torch.rand(3, generator=g), "amax_history_fwd": torch.rand(16, 3, generator=g)}
    buffer = io.BytesIO()
    torch.save(meta, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


class _AsSaved:
    """Stands in for a model chunk in save_checkpoint: hands over a rewritten sharded state dict."""

    def __init__(self, sharded):
        self.sharded = sharded

    def sharded_state_dict(self):
        return self.sharded


def _te_named(chunk):
    """The chunk's sharded state dict as TE's layer spec saves it."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.transformer.utils import make_sharded_object_for_checkpoint

    out = {}
    for path, item in chunk.sharded_state_dict().items():
        for local, te in TE_PATHS.items():
            path = path.replace(local, te)
        if isinstance(item, ShardedObject) and item.key.endswith("._extra_state"):
            item.data = _fp8_extra_state(len(path))
            if item.key.endswith("linear_qkv._extra_state"):  # TEDotProductAttention's, per layer
                key = item.key.replace("linear_qkv", "core_attention")
                offsets = ((0, item.global_offset[0], item.global_shape[0]),)
                out[path.replace("linear_qkv", "core_attention")] = make_sharded_object_for_checkpoint(
                    _fp8_extra_state(7), key, offsets, replica_id=item.replica_id
                )
        out[path] = item
    return out


def _without_extra_state(chunk):
    return {p: v for p, v in chunk.sharded_state_dict().items() if not p.endswith("_extra_state")}


def _without(chunk, key):
    return {p: v for p, v in chunk.sharded_state_dict().items() if getattr(v, "key", None) != key}


def _ranks(root, tokens, imported, tokenizer):
    from megatron.core import parallel_state

    from megactllm.convert import layout
    from megactllm.model import build_model
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.checkpoint import extra_state
    from megactllm.checkpoint import CheckpointError, Checkpointer

    cfg = tiny_config(VOCAB, 2, 1, num_query_groups=2, rotary_base=500000.0, norm_epsilon=1e-6)
    initialize_parallel(cfg.parallel, seed=1234, num_layers=cfg.model.num_layers)
    (chunk,) = build_model(cfg.model, cfg.parallel, cfg.optim)
    out = {"model": megactllm_logits([chunk], tokens)}
    Checkpointer(f"{root}/te").save(1, [_AsSaved(_te_named(chunk))], cfg, tokenizer_path=tokenizer)
    Checkpointer(f"{root}/no_extra").save(1, [_AsSaved(_without_extra_state(chunk))], cfg)
    Checkpointer(f"{root}/no_fc2").save(1, [_AsSaved(_without(chunk, layout.FC2))], cfg)
    for name in ("te", "no_extra"):
        (fresh,) = build_model(cfg.model, cfg.parallel, cfg.optim)
        Checkpointer.load_weights(f"{root}/{name}", [fresh], cfg.model)
        out[name] = megactllm_logits([fresh], tokens)
    (fresh,) = build_model(cfg.model, cfg.parallel, cfg.optim)
    try:
        Checkpointer.load_weights(f"{root}/no_fc2", [fresh], cfg.model)
        out["no_fc2"] = "loaded"
    except CheckpointError as e:
        out["no_fc2"] = str(e)

    # The HF import read by a TE-shaped request vs by the local spec.
    icfg = tiny_config(VOCAB, 2, 1, num_query_groups=2, rotary_base=500000.0, norm_epsilon=1e-6, num_layers=2)
    parallel_state.destroy_model_parallel()
    initialize_parallel(icfg.parallel, seed=1, num_layers=2)
    (local,) = build_model(icfg.model, icfg.parallel, icfg.optim)
    Checkpointer.load_weights(imported, [local], icfg.model)
    (te_like,) = build_model(icfg.model, icfg.parallel, icfg.optim)
    loaded, absent = extra_state.load_model_state({"chunk0": _te_named(te_like)}, f"{imported}/model")
    weights = {p: t for p, t in loaded["chunk0"].items() if isinstance(t, torch.Tensor) and not p.endswith("_extra_state")}
    local_sd = local.state_dict()
    for te_path, tensor in weights.items():
        local_path = te_path
        for lp, tp in TE_PATHS.items():
            local_path = local_path.replace(tp, lp)
        torch.testing.assert_close(tensor, local_sd[local_path], rtol=0, atol=0, msg=te_path)
    out["import_absent"] = sorted(absent)
    out["import_weights"] = len(weights)
    last = parallel_state.get_tensor_model_parallel_rank() == 0
    destroy_parallel()
    return out if last else None


def test_te_named_checkpoints_export_and_load_with_parity(tmp_path):
    tokenizer = train_tiny_sentencepiece(tmp_path / "tiny.model", VOCAB)
    hf_in = tmp_path / "hf_in"
    tiny_hf_llama(VOCAB).save_pretrained(hf_in)
    (hf_in / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    imported = import_from_hf(hf_in, tmp_path / "imported", target_tp=2, progress_stream=None).checkpoint

    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(3))
    (out,) = [r for r in run_distributed(_ranks, 2, str(tmp_path), tokens, str(imported), str(tokenizer), timeout=400) if r]
    ours = out["model"][..., :VOCAB]
    for name in ("te", "no_extra"):
        diff = (out[name][..., :VOCAB] - ours).abs().max().item()
        assert diff == 0, f"{name} checkpoint loaded into the local spec: logits differ by {diff}"
    refused = out["no_fc2"]
    assert "no_fc2" in refused and "lacks" in refused and "decoder.layers.mlp.linear_fc2.weight" in refused, refused

    export_to_hf(tmp_path / "te", tmp_path / "hf_te", progress_stream=None)
    diff = (hf_logits(tmp_path / "hf_te", tokens) - ours).abs().max().item()
    assert diff < TOLERANCE, f"TE checkpoint exported to HF: logits differ by {diff}"

    # Only TE's core-attention extra state is missing from an import (2 layers, one stacked key).
    assert out["import_absent"] == ["decoder.layers.self_attention.core_attention._extra_state"]
    assert out["import_weights"] == 2 * 6 + 3


def test_importer_maps_te_parameter_names_to_the_same_tensors(tmp_path):
    from megactllm.convert.hf_config import model_config_from_hf, read_hf_config
    from megactllm.convert.importer import _Filler
    from megactllm.convert.progress import ConversionProgress
    from megactllm.convert.safetensors_io import SafetensorsCheckpoint

    tiny_hf_llama(VOCAB).save_pretrained(tmp_path)
    model = model_config_from_hf(read_hf_config(tmp_path), "config.json")
    weights = SafetensorsCheckpoint(tmp_path)
    filler = _Filler(weights, model, 384, weights.read, ConversionProgress("import", 0, None))
    for local, te in TE_PATHS.items():
        a = filler.tensor_for(f"decoder.layers.1.{local}")
        b = filler.tensor_for(f"decoder.layers.1.{te}")
        assert torch.equal(a, b) and a.shape == (model.hidden_size,)
    assert not torch.equal(filler.tensor_for("decoder.layers.1.mlp.linear_fc1.layer_norm_weight"),
                           filler.tensor_for("decoder.layers.1.self_attention.linear_qkv.layer_norm_weight"))
    with pytest.raises(Exception, match="no Hugging Face source"):
        filler.tensor_for("decoder.layers.1.self_attention.core_attention._extra_state")
