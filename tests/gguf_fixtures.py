"""Fixtures for the GGUF and serving tests: a tiny random LLaMA (HF) with the real MAP-NEO
SentencePiece tokenizer extended by the chat tokens, exported to GGUF once per session.

Import into a test module with `from gguf_fixtures import *`.
"""
from pathlib import Path

import pytest
from chat_fixtures import chat_sp_model, extend_with_chat_tokens  # noqa: F401
from convert_testing import tiny_hf_llama

__all__ = ["chat_sp_model", "extend_with_chat_tokens", "tiny_hf_dir", "gguf_f32", "zh_docs", "llama_cpp", "TINY"]

# Rows of 256 so llama.cpp's k-quants (256-wide blocks) really run; GQA; a small context so the
# prompt-too-long case is cheap. A larger init spreads the logits so greedy choices are not near-ties.
TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256, initializer_range=0.1, rope_theta=500000.0, rms_norm_eps=1e-6)


@pytest.fixture(scope="session")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[serve]')")


@pytest.fixture(scope="session")
def tiny_hf_dir(chat_sp_model, tmp_path_factory) -> Path:
    from megactllm.convert.tokenizer_export import export_tokenizer
    from megactllm.tokenizer import load_tokenizer
    from megactllm.tokenizer.chat_template import CHAT_TEMPLATE

    out = tmp_path_factory.mktemp("tiny_hf") / "tiny-zh"
    vocab = load_tokenizer("sentencepiece", str(chat_sp_model)).vocab_size
    tiny_hf_llama(vocab, **TINY).save_pretrained(out)
    export_tokenizer("sentencepiece", chat_sp_model, out, chat_template=CHAT_TEMPLATE,
                     model_max_length=TINY["max_position_embeddings"])
    return out


@pytest.fixture(scope="session")
def gguf_f32(tiny_hf_dir, tmp_path_factory) -> Path:
    from megactllm.convert.gguf import export_gguf

    out = tmp_path_factory.mktemp("gguf") / "tiny-zh-f32.gguf"
    export_gguf(tiny_hf_dir, out, "f32", progress_stream=None)
    return out


@pytest.fixture(scope="session")
def zh_docs(shared_data) -> list[str]:
    lines = (shared_data / "corpus" / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()]
