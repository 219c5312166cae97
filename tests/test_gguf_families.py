"""GGUF export of the Qwen2, Qwen3, Llama-3 (llama3 RoPE scaling) and Mistral families loads in
llama.cpp and gives transformers' f32 logits: Q/K biases (qwen2), per-head Q/K norms (qwen3, head_dim
!= hidden/heads), the rope_freqs tensor (llama3) and Mistral's untied output through llama.cpp's
llama graph all reach llama.cpp."""
from pathlib import Path

import numpy as np
import pytest
import torch
from family_testing import tiny_hf_model
# Narrow enough for CPU, wide enough that llama.cpp's kernels run their real paths.
SHAPES = {
    "qwen2": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=128),
    "llama3": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64),
    "mistral": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64),
}


@pytest.mark.parametrize("family", list(SHAPES))
def test_family_gguf_logits_match_transformers(family, tmp_path, sp_model_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[serve]')")
    import gguf

    from megactllm.convert.gguf import export_gguf
    from megactllm.tokenizer import load_tokenizer

    # The real MAP-NEO SentencePiece model (identity normalizer, as llama.cpp tokenizes).
    tokenizer = Path(sp_model_path)
    vocab = load_tokenizer("sentencepiece", str(tokenizer)).vocab_size
    hf_dir = tmp_path / "hf"
    model = tiny_hf_model(family, vocab, initializer_range=0.1, max_position_embeddings=512, **SHAPES[family])
    model.save_pretrained(hf_dir)
    (hf_dir / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    out = tmp_path / f"{family}.gguf"
    export_gguf(hf_dir, out, "f32", progress_stream=None)

    reader = gguf.GGUFReader(str(out))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    assert arch == {"qwen2": "qwen2", "qwen3": "qwen3", "llama3": "llama", "mistral": "llama"}[family]
    names = {t.name for t in reader.tensors}
    assert ("blk.0.attn_q.bias" in names) == (family == "qwen2")
    assert ("blk.0.attn_q_norm.weight" in names) == (family == "qwen3")
    assert ("rope_freqs.weight" in names) == (family == "llama3")

    # 300 positions: llama3's scaling changes the rotation of the low and medium frequencies by
    # tenths of a radian there, so a GGUF without its rope_freqs would show in the logits.
    ids = torch.randint(3, vocab, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].numpy()
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=512, logits_all=True, verbose=False, n_threads=2,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    llm.eval(ids)
    ours = np.array(llm.scores[: len(ids)], dtype=np.float32)
    diff = float(np.abs(ours - theirs).max())
    print(f"{family} f32 GGUF vs transformers: max |logit diff| = {diff:.2e} (logit scale {np.abs(theirs).max():.1f})")
    assert diff < 1e-3
