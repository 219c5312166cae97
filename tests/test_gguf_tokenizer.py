"""GGUF tokenization through llama.cpp alone (llama-cpp-python, no help from megactllm's engine).

Plain text: llama.cpp must give the HF tokenizer's (and SentencePiece's) ids for real held-out
text, with the BOS/EOS the model's tokenizer adds. Chat prompts: llama.cpp as the file says puts
SentencePiece's space after each chat token (the difference the README names); megactllm's engine
gives training's ids.
"""
import json
import re
import shutil

import pytest
from gguf_fixtures import *  # noqa: F401,F403

from megactllm.convert.gguf import export_gguf
from megactllm.tokenizer.chat_template import IM_END, IM_START, render

MESSAGES = [{"role": "system", "content": "你是一个乐于助人的助手。"}, {"role": "user", "content": "What about 上海? 请回答。"}]


def _vocab_only(path):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def heldout_texts(zh_docs, shared_data):
    """200 real texts the tokenizer was not trained on: Chinese web text and English C4 documents."""
    en = [json.loads(line)["text"] for line in (shared_data / "corpus" / "c4_demo_en.jsonl").read_text(encoding="utf-8").splitlines()]
    return zh_docs[-150:] + en[:50]


def test_llama_cpp_alone_tokenizes_plain_text_as_hf(gguf_f32, tiny_hf_dir, chat_sp_model, heldout_texts, llama_cpp):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    llm = _vocab_only(gguf_f32)
    hf = AutoTokenizer.from_pretrained(str(tiny_hf_dir), local_files_only=True)
    sp = spm.SentencePieceProcessor(model_file=str(chat_sp_model))
    assert len(heldout_texts) == 200
    differ = []
    for text in heldout_texts:
        # add_bos=True: llama.cpp adds whatever the file says the tokenizer adds (here nothing).
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        if ids != hf(text)["input_ids"] or ids != sp.encode(text):
            differ.append(text[:30])
    assert not differ, f"{len(differ)} of 200 texts tokenize differently, e.g. {differ[:3]}"


def test_chat_prompts_llama_cpp_alone_and_our_engine(gguf_f32, tiny_hf_dir, chat_sp_model, llama_cpp):
    """llama.cpp alone: each text after a chat token gets SentencePiece's dummy prefix (README);
    our engine: training's (and HF's) ids."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from megactllm.serve.llama_engine import LlamaCppEngine

    sp = spm.SentencePieceProcessor(model_file=str(chat_sp_model))
    text = render(MESSAGES, add_generation_prompt=True)
    hf = AutoTokenizer.from_pretrained(str(tiny_hf_dir), local_files_only=True)
    training = hf(text)["input_ids"]
    documented = []
    for fragment in re.split(f"({re.escape(IM_START)}|{re.escape(IM_END)})", text):
        if fragment:
            documented += [sp.piece_to_id(fragment)] if fragment in (IM_START, IM_END) else sp.encode(fragment)
    alone = _vocab_only(gguf_f32).tokenize(text.encode("utf-8"), add_bos=False, special=True)
    assert alone == documented != training
    assert LlamaCppEngine(gguf_f32, n_ctx=256).chat_tokens(MESSAGES) == training


@pytest.mark.parametrize("settings", [dict(add_bos_token=True), dict(add_bos_token=False, add_eos_token=True)],
                         ids=["bos", "eos"])
def test_third_party_hf_model_keeps_its_bos_eos(settings, sp_model_path, tmp_path, zh_docs, llama_cpp):
    """An HF model and tokenizer saved by transformers alone: the GGUF says what the tokenizer adds,
    llama.cpp alone adds it, and both engines start prompts with the BOS where there is one."""
    from convert_testing import tiny_hf_llama
    from transformers import AutoTokenizer, LlamaTokenizer

    from megactllm.serve import load_engine

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sp_model_path, src / "tokenizer.model")
    model_dir = tmp_path / "third_party"
    tiny_hf_llama(64000, **TINY).save_pretrained(model_dir)
    LlamaTokenizer.from_pretrained(str(src), **settings).save_pretrained(model_dir)
    if not (model_dir / "tokenizer.model").is_file():  # transformers 5 writes tokenizer.json only; Hub repos ship both
        shutil.copy(sp_model_path, model_dir / "tokenizer.model")
    hf = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    bos, eos = settings.get("add_bos_token", False), settings.get("add_eos_token", False)
    ids = hf("长城很长。")["input_ids"]
    assert (ids[0] == hf.bos_token_id, ids[-1] == hf.eos_token_id) == (bos, eos)  # what transformers saved

    out = export_gguf(model_dir, tmp_path / "third_party.gguf", "f32", progress_stream=None).path
    llm = _vocab_only(out)
    assert (llm.metadata["tokenizer.ggml.add_bos_token"], llm.metadata["tokenizer.ggml.add_eos_token"]) == (
        str(bos).lower(), str(eos).lower())
    for text in zh_docs[:20] + ["长城很长。"]:
        assert llm.tokenize(text.encode("utf-8"), add_bos=True, special=False) == hf(text)["input_ids"]
    prompt = hf("长城很长。", add_special_tokens=False)["input_ids"]
    expected = [hf.bos_token_id] * bos + prompt  # a prompt gets the BOS, never the EOS
    assert load_engine(str(out), threads=1).tokenize("长城很长。") == expected
    assert load_engine(str(model_dir), threads=1).tokenize("长城很长。") == expected
