"""GGUF of the MoE families: llama.cpp's qwen3moe and qwen2moe graphs run the export (experts
stacked per layer, the expert counts in the metadata, Qwen2-MoE's gated shared expert) and give
transformers' f32 logits within 1e-3; quantized files hold the same experts."""
from pathlib import Path

import numpy as np
import pytest
import torch
from moe_testing import tiny_moe_model

# All layers MoE (llama.cpp's graphs have no dense layers in these architectures).
SHAPES = {
    "qwen3_moe": dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=64, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=64, mlp_only_layers=[]),
    "qwen2_moe": dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=64, num_attention_heads=4,
                      num_key_value_heads=2, shared_expert_intermediate_size=96),
}


def _saved_moe_model(family: str, tmp_path: Path, sp_model_path):
    """A tiny random MoE model of `family` saved by transformers with the real MAP-NEO SentencePiece
    model (identity normalizer, as llama.cpp tokenizes); (model, its directory, vocabulary size)."""
    from megactllm.tokenizer import load_tokenizer

    tokenizer = Path(sp_model_path)
    vocab = load_tokenizer("sentencepiece", str(tokenizer)).vocab_size
    hf_dir = tmp_path / "hf"
    model = tiny_moe_model(family, vocab, initializer_range=0.1, max_position_embeddings=256, **SHAPES[family])
    model.save_pretrained(hf_dir)
    (hf_dir / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    return model, hf_dir, vocab


@pytest.mark.parametrize("family", list(SHAPES))
def test_moe_gguf_logits_match_transformers(family, tmp_path, sp_model_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[serve]')")
    import gguf

    from megactllm.convert.gguf import export_gguf

    model, hf_dir, vocab = _saved_moe_model(family, tmp_path, sp_model_path)
    out = tmp_path / f"{family}.gguf"
    export_gguf(hf_dir, out, "f32", progress_stream=None)

    reader = gguf.GGUFReader(str(out))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    assert arch == {"qwen3_moe": "qwen3moe", "qwen2_moe": "qwen2moe"}[family]
    assert int(reader.fields[f"{arch}.expert_count"].parts[-1][0]) == 8
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
    assert shapes["blk.0.ffn_gate_exps.weight"] == (128, 64, 8)  # ggml order: in, out, experts
    assert ("blk.1.ffn_gate_inp_shexp.weight" in shapes) == (family == "qwen2_moe")

    ids = torch.randint(3, vocab, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].numpy()
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    llm.eval(ids)
    ours = np.array(llm.scores[: len(ids)], dtype=np.float32)
    diff = float(np.abs(ours - theirs).max())
    print(f"{family} f32 GGUF vs transformers: max |logit diff| = {diff:.2e} (logit scale {np.abs(theirs).max():.1f})")
    assert diff < 1e-3


@pytest.mark.parametrize("family", list(SHAPES))
def test_quantized_moe_gguf_holds_the_experts_and_runs_close(family, tmp_path, sp_model_path):
    """llama.cpp's quantizer on the stacked expert tensors. Every tensor of the Q8_0 and Q4_0 files,
    dequantized by the gguf library, is the f32 file's within one block's rounding (so each expert's
    weights sit where llama.cpp reads them); and llama.cpp on the Q8_0 file stays near transformers'
    f32 logits: mean KL 1.5e-3 (Qwen3-MoE) and 8e-4 (Qwen2-MoE) measured, where swapping two
    experts of one layer gives 0.12."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[serve]')")
    import gguf
    from gguf.quants import dequantize

    from megactllm.convert.gguf import export_gguf

    model, hf_dir, vocab = _saved_moe_model(family, tmp_path, sp_model_path)
    f32 = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(export_gguf(hf_dir, tmp_path / "f32.gguf", "f32",
                                                                              progress_stream=None).path)).tensors}
    files = {}
    # Q8_0: 32 weights share a step of max|w|/127; Q4_0: of max|w|/8.
    for outtype, steps in (("q8_0", 127), ("q4_0", 8)):
        files[outtype] = export_gguf(hf_dir, tmp_path / f"{outtype}.gguf", outtype, progress_stream=None).path
        tensors = gguf.GGUFReader(str(files[outtype])).tensors
        assert {t.tensor_type.name for t in tensors if t.name.endswith("_exps.weight")} == {outtype.upper()}
        for t in tensors:
            values = dequantize(t.data, t.tensor_type).reshape(f32[t.name].shape)
            if t.tensor_type.name in ("F32", "F16"):  # kept in float by llama.cpp's quantizer (norms, the router)
                np.testing.assert_allclose(values, f32[t.name], rtol=1e-3, atol=1e-6, err_msg=f"{outtype} {t.name}")
                continue
            # another type is a finer one llama.cpp picks (Q6_K for the output layer): Q4_0's bound holds
            step = np.abs(f32[t.name]).reshape(-1, 32).max(-1, keepdims=True) / (steps if t.tensor_type.name == outtype.upper() else 8)
            err = np.abs(values - f32[t.name]).reshape(-1, 32)
            # within a step (Q4_0 clips the block's other extreme by up to one); a misplaced expert is off by many
            assert (err <= 1.01 * step).all(), f"{outtype} {t.name}: off by {(err / step).max():.2f} of a step"

    ids = torch.randint(3, vocab, (64,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        theirs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    llm = llama_cpp.Llama(model_path=str(files["q8_0"]), n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    llm.eval(ids)
    ours = torch.log_softmax(torch.tensor(np.array(llm.scores[: len(ids)])).double(), -1)
    kl = float((theirs.exp() * (theirs - ours)).sum(-1).mean())
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).double().mean())
    print(f"{family} Q8_0 GGUF in llama.cpp vs transformers f32: mean KL {kl:.1e}, argmax agreement {agree:.2f}")
    assert kl < 1e-2 and agree >= 0.8


def test_a_model_llama_cpp_would_route_differently_is_refused(tmp_path):
    from megactllm.convert.errors import ConversionError
    from megactllm.convert.gguf.tensors import check_runnable
    from megactllm.convert.hf_config import model_config_from_hf

    for overrides, problem in (({"norm_topk_prob": False, "mlp_only_layers": []},
                                "norm_topk_prob=False .llama.cpp's qwen3moe graph computes True."),
                               ({"mlp_only_layers": [0]}, "dense layers mixed in")):
        config = tiny_moe_model("qwen3_moe", 300, **overrides).config.to_dict()
        config["architectures"] = ["Qwen3MoeForCausalLM"]
        model = model_config_from_hf(config, "config.json")
        with pytest.raises(ConversionError, match=f"config.json: llama.cpp cannot run this model: {problem}"):
            check_runnable(model, "config.json")
