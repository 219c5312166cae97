"""GGUF of the MoE families: llama.cpp's qwen3moe and qwen2moe graphs run the export (experts
stacked per layer, the expert counts in the metadata, Qwen2-MoE's gated shared expert) and give
transformers' f32 logits within 1e-3."""
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


@pytest.mark.parametrize("family", list(SHAPES))
def test_moe_gguf_logits_match_transformers(family, tmp_path, sp_model_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[serve]')")
    import gguf

    from megactllm.convert.gguf import export_gguf
    from megactllm.tokenizer import load_tokenizer

    tokenizer = Path(sp_model_path)
    vocab = load_tokenizer("sentencepiece", str(tokenizer)).vocab_size
    hf_dir = tmp_path / "hf"
    model = tiny_moe_model(family, vocab, initializer_range=0.1, max_position_embeddings=256, **SHAPES[family])
    model.save_pretrained(hf_dir)
    (hf_dir / "tokenizer.model").write_bytes(tokenizer.read_bytes())
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
