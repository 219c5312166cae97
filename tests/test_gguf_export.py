"""GGUF export checked against llama.cpp itself (through llama-cpp-python) and transformers.

A tiny random LLaMA with the real MAP-NEO SentencePiece tokenizer (+ chat tokens): llama.cpp must
tokenize real Chinese text like SentencePiece, give transformers' logits (f32, f32 KV cache) and
greedy continuation, render the chat template like ours; quantized files are made by llama.cpp's
quantizer and their held-out loss is reported against f32; a TP=2 megactllm checkpoint exports too.
"""
import math

import numpy as np
import pytest
import torch
from gguf_fixtures import *  # noqa: F401,F403

from megactllm.convert import ConversionError
from megactllm.convert.gguf import export_gguf
from megactllm.tokenizer.chat_template import CHAT_TEMPLATE, IM_END, IM_START, render, tokenize_conversation

MESSAGES = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "请用一句话介绍一下北京。"},
    {"role": "assistant", "content": "北京是中国的首都，有三千多年的历史。"},
    {"role": "user", "content": "What about 上海? 请回答 in English & 中文."},
]


def _llama(path, **kw):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, **kw)


def _hf_logits(hf_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, local_files_only=True).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy(), model


def _llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def test_metadata_vocab_and_template(gguf_f32, chat_sp_model):
    import gguf
    import sentencepiece as spm

    reader = gguf.GGUFReader(str(gguf_f32))
    field = lambda name: reader.fields[name].contents()  # noqa: E731
    sp = spm.SentencePieceProcessor(model_file=str(chat_sp_model))
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    assert tokens == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert types[sp.piece_to_id("<0xE4>")] == gguf.TokenType.BYTE and types[2] == gguf.TokenType.CONTROL
    assert types[sp.piece_to_id(IM_START)] == gguf.TokenType.USER_DEFINED
    assert field("tokenizer.ggml.scores")[100] == pytest.approx(sp.get_score(100))
    assert field("tokenizer.ggml.eot_token_id") == sp.piece_to_id(IM_END)
    assert field("tokenizer.ggml.eos_token_id") == 2 and field("tokenizer.ggml.add_bos_token") is False
    assert field("tokenizer.ggml.add_eos_token") is False
    # MAP-NEO's normalizer adds the dummy prefix; our HF export puts it only at the start of a text.
    assert field("tokenizer.ggml.add_space_prefix") is True and field("megactllm.tokenizer.chat_space_prefix") is False
    assert field("tokenizer.chat_template") == CHAT_TEMPLATE
    assert field("llama.attention.head_count_kv") == 2 and field("llama.rope.freq_base") == 500000.0
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}


def test_tokenization_matches_sentencepiece_and_hf(gguf_f32, chat_sp_model, tiny_hf_dir, zh_docs, llama_cpp):
    from transformers import AutoTokenizer

    from megactllm.serve.llama_engine import LlamaCppEngine
    from megactllm.tokenizer import load_tokenizer

    engine = LlamaCppEngine(gguf_f32, n_ctx=256)
    ours = load_tokenizer("sentencepiece", str(chat_sp_model))
    docs = zh_docs[:300] + ["  两个空格开头", "tab\tand\nnewline 混合 text", "emoji 😀 和罕见字 𠀋", f"中间有{IM_START}特殊{IM_END}词"]
    mismatches = [d[:40] for d in docs if engine.tokenize(d) != ours.encode(d)]
    assert not mismatches, f"{len(mismatches)} texts tokenize differently, e.g. {mismatches[:3]}"

    hf = AutoTokenizer.from_pretrained(str(tiny_hf_dir), local_files_only=True)
    expected = list(hf.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)["input_ids"])
    assert engine.chat_tokens(MESSAGES) == expected
    assert expected == tokenize_conversation(ours, MESSAGES + [{"role": "assistant", "content": ""}]).tokens.tolist()[:len(expected)]


def test_llama_cpp_renders_our_chat_template(gguf_f32, llama_cpp):
    """llama.cpp's own template engine (llama_chat_apply_template) on the template stored in the file."""
    import ctypes

    llm = llama_cpp.Llama(model_path=str(gguf_f32), vocab_only=True, verbose=False)
    template = llm.metadata["tokenizer.chat_template"].encode()
    chat = (llama_cpp.llama_chat_message * len(MESSAGES))(
        *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in MESSAGES])
    buf = ctypes.create_string_buffer(8192)
    n = llama_cpp.llama_chat_apply_template(template, chat, len(MESSAGES), True, buf, len(buf))
    assert n > 0
    assert buf.raw[:n].decode("utf-8") == render(MESSAGES, add_generation_prompt=True)


def test_f32_logits_and_greedy_match_transformers(gguf_f32, tiny_hf_dir, chat_sp_model, zh_docs, llama_cpp):
    from megactllm.tokenizer import load_tokenizer

    ids = load_tokenizer("sentencepiece", str(chat_sp_model)).encode(zh_docs[0])[:48]
    theirs, model = _hf_logits(tiny_hf_dir, ids)
    llm = _llama(gguf_f32)
    ours = _llama_logits(llm, ids)
    diff = float(np.abs(ours - theirs).max())
    print(f"f32 GGUF vs transformers: max |logit diff| = {diff:.2e} (logit scale {np.abs(theirs).max():.1f})")
    assert diff < 1e-3

    with torch.no_grad():
        hf_greedy = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, min_new_tokens=24,
                                   pad_token_id=0)[0, len(ids):].tolist()
    llm.reset()
    cpp_greedy = []
    for token in llm.generate(ids, temp=0.0, top_k=1):
        cpp_greedy.append(int(token))
        if len(cpp_greedy) == 24:
            break
    assert cpp_greedy == hf_greedy


def _nll(llm, docs) -> float:
    total, count = 0.0, 0
    for ids in docs:
        logits = torch.from_numpy(_llama_logits(llm, ids))
        total += torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum").item()
        count += len(ids) - 1
    return total / count


def test_quantized_types_heldout_loss(gguf_f32, tiny_hf_dir, chat_sp_model, zh_docs, tmp_path, llama_cpp):
    import gguf

    from megactllm.tokenizer import load_tokenizer

    tok = load_tokenizer("sentencepiece", str(chat_sp_model))
    heldout = [tok.encode(d)[:128] for d in zh_docs[-4:]]
    losses = {"f32": _nll(_llama(gguf_f32), heldout)}
    kinds = {"q8_0": {"Q8_0"}, "q4_0": {"Q4_0"}, "q4_k_m": {"Q4_K", "Q6_K"}}
    for outtype, expected_types in kinds.items():
        path = export_gguf(tiny_hf_dir, tmp_path / f"tiny-{outtype}.gguf", outtype, progress_stream=None).path
        stored = {t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors if len(t.shape) == 2}
        assert expected_types <= stored, f"{outtype}: tensor types {stored}"
        losses[outtype] = _nll(_llama(path), heldout)
    for name, loss in losses.items():
        print(f"held-out loss {name:7s} {loss:.4f}  ({loss - losses['f32']:+.4f} vs f32)")
    assert all(math.isfinite(v) for v in losses.values())
    assert abs(losses["q8_0"] - losses["f32"]) < 0.01 * losses["f32"]
    assert abs(losses["q4_0"] - losses["f32"]) < 0.1 * losses["f32"]
    assert abs(losses["q4_k_m"] - losses["f32"]) < 0.1 * losses["f32"]


def test_megactllm_tp2_checkpoint_to_gguf(chat_sp_model, tmp_path, llama_cpp):
    """A model saved by 2 ranks at TP=2 (GQA, non-default RoPE base and eps): llama.cpp on its GGUF
    gives megatron-core's own logits."""
    from convert_testing import layout_jobs, merge_rank_results, tiny_config

    from megactllm.testing import run_distributed
    from megactllm.tokenizer import load_tokenizer

    vocab = load_tokenizer("sentencepiece", str(chat_sp_model)).vocab_size
    cfg = tiny_config(vocab, tp=2, pp=1, num_query_groups=2, rotary_base=500000.0, norm_epsilon=1e-6)
    tokens = torch.randint(0, vocab, (1, 16), generator=torch.Generator().manual_seed(0))
    job = dict(name="tp2", cfg=cfg, save_to=str(tmp_path / "ckpt"), tokenizer=str(chat_sp_model), tokens=tokens)
    ours = merge_rank_results(run_distributed(layout_jobs, 2, [job], timeout=300))["tp2"][0, :, :vocab].numpy()

    out = export_gguf(tmp_path / "ckpt", tmp_path / "from-ckpt.gguf", "f32", progress_stream=None).path
    llm = _llama(out)
    assert llm.metadata["tokenizer.chat_template"] == CHAT_TEMPLATE
    diff = float(np.abs(_llama_logits(llm, tokens[0].tolist()) - ours).max())
    print(f"TP=2 checkpoint -> GGUF: llama.cpp vs megatron-core max |logit diff| = {diff:.2e}")
    assert diff < 1e-3


def test_bad_inputs_are_clear_errors(tiny_hf_dir, gguf_f32, tmp_path, monkeypatch):
    import shutil

    from megactllm.config import ModelConfig
    from megactllm.convert.gguf import export as gguf_export
    from megactllm.convert.gguf.tensors import check_runnable

    with pytest.raises(ConversionError, match="does not exist"):
        export_gguf(tmp_path / "nowhere", tmp_path / "x.gguf", "f32", progress_stream=None)
    with pytest.raises(ConversionError, match="already exists"):
        export_gguf(tiny_hf_dir, gguf_f32, "f32", progress_stream=None)
    with pytest.raises(ConversionError, match="not supported"):
        export_gguf(tiny_hf_dir, tmp_path / "x.gguf", "q2_k", progress_stream=None)
    with pytest.raises(ConversionError, match="odd head dimension"):
        check_runnable(ModelConfig(hidden_size=60, num_attention_heads=4, kv_channels=15), "m")
    with pytest.raises(ConversionError, match="linear biases"):
        check_runnable(ModelConfig(add_bias_linear=True), "m")

    no_tok = tmp_path / "no_tok"
    shutil.copytree(tiny_hf_dir, no_tok)
    (no_tok / "tokenizer.model").unlink()
    with pytest.raises(ConversionError, match="tokenizer.model"):
        export_gguf(no_tok, tmp_path / "x.gguf", "f32", progress_stream=None)

    # A crash mid-write leaves neither the output nor a partial file behind.
    real = gguf_export.to_gguf
    calls = []

    def dies_on_fifth(*args):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full (simulated)")
        return real(*args)

    monkeypatch.setattr(gguf_export, "to_gguf", dies_on_fifth)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(tiny_hf_dir, tmp_path / "crash.gguf", "f16", progress_stream=None)
    assert not list(tmp_path.glob("crash.gguf*"))

    # A killed export (its partial file named by a process that is gone) is redone by the next run.
    monkeypatch.setattr(gguf_export, "to_gguf", real)
    stale = tmp_path / "crash.gguf.partial-999999999"
    stale.write_bytes(b"half a file")
    export_gguf(tiny_hf_dir, tmp_path / "crash.gguf", "f16", progress_stream=None)
    assert sorted(p.name for p in tmp_path.glob("crash.gguf*")) == ["crash.gguf"]
