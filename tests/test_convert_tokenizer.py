"""The exported HF tokenizer encodes like megactllm's on the real corpora (MAP-NEO SentencePiece)."""
import json

from convert_testing import extend_sentencepiece_proto

from megactllm.convert.tokenizer_export import export_tokenizer
from megactllm.tokenizer import load_tokenizer
from megactllm.tokenizer.chat_template import (
    CHAT_TEMPLATE,
    IM_END,
    IM_START,
    render,
    tokenize_conversation,
)


def _real_texts(shared_data) -> dict:
    corpus = shared_data / "corpus"
    zh = corpus.joinpath("clue_small_zh.txt").read_text(encoding="utf-8").splitlines()
    c4 = [json.loads(line)["text"] for line in corpus.joinpath("c4_demo_en.jsonl").read_text(encoding="utf-8").splitlines()]
    pairs = corpus.joinpath("news_commentary_en_zh.tsv").read_text(encoding="utf-8").splitlines()
    parallel = [side for line in pairs for side in line.split("\t")]
    return {"clue_small_zh": zh, "c4_demo_en": c4, "news_commentary_en_zh": parallel}


def _auto_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def test_exported_tokenizer_encodes_like_ours_on_the_real_corpus(tmp_path, shared_data, sp_model_path):
    ours = export_tokenizer("sentencepiece", sp_model_path, tmp_path, chat_template=CHAT_TEMPLATE, model_max_length=4096)
    hf = _auto_tokenizer(tmp_path)
    assert len(hf) == ours.vocab_size == 64000
    assert (hf.eos_token_id, hf.bos_token_id, hf.unk_token_id) == (ours.eod_id, ours.bos_id, 0)
    for name, texts in _real_texts(shared_data).items():
        documents = [t for t in texts if t]
        theirs = hf(documents, add_special_tokens=False)["input_ids"]
        mismatched = [i for i, text in enumerate(documents) if theirs[i] != ours.encode(text)]
        assert not mismatched, f"{name}: {len(mismatched)} of {len(documents)} differ, first {documents[mismatched[0]][:80]!r}"
    assert hf("你好").input_ids == ours.encode("你好")  # no BOS added by default, as megactllm trains
    assert hf.decode(ours.encode("数字 123 和 English")) == "数字 123 和 English"


def test_chat_tokens_of_an_extended_tokenizer_survive_export(tmp_path, sp_model_path):
    extended = extend_sentencepiece_proto(
        sp_model_path, tmp_path / "chat.model", [(IM_START, "user_defined"), (IM_END, "user_defined")]
    )
    ours = export_tokenizer("sentencepiece", extended, tmp_path / "hf", chat_template=CHAT_TEMPLATE)
    hf = _auto_tokenizer(tmp_path / "hf")
    messages = [{"role": "user", "content": "你好，介绍一下自己"}, {"role": "assistant", "content": "我是 megactllm 训练的模型。"}]
    text = render(messages)
    assert hf.apply_chat_template(messages, tokenize=False) == text
    ids = hf(text, add_special_tokens=False).input_ids
    assert hf.convert_tokens_to_ids([IM_START, IM_END]) == [64000, 64001] and ids.count(64001) == 2
    # SentencePiece puts its dummy-prefix "▁" before a text that starts with a user-defined piece;
    # HF's Metaspace does not (documented in tokenizer_export). Everything after it is identical.
    expected = ours.encode(text)
    assert expected[0] == ours.token_to_id("\u2581") and ids == expected[1:]
    # megactllm's SFT tokenization drops that "▁", so training ids are what HF's template gives.
    templated = hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert tokenize_conversation(ours, messages).tokens.tolist() == templated == ids


def test_huggingface_tokenizer_json_exports_too(tmp_path):
    from convert_testing import train_tiny_sentencepiece

    sp_model = train_tiny_sentencepiece(tmp_path / "tiny.model")
    export_tokenizer("sentencepiece", sp_model, tmp_path / "from_sp")  # gives us a tokenizer.json to start from
    ours = export_tokenizer("huggingface", tmp_path / "from_sp" / "tokenizer.json", tmp_path / "from_json")
    hf = _auto_tokenizer(tmp_path / "from_json")
    text = "the model reads tensor pipeline text and learns which token comes next"
    assert ours.tokenizer_type == "huggingface"
    assert hf(text).input_ids == ours.encode(text) == load_tokenizer("sentencepiece", str(sp_model)).encode(text)
    assert hf.eos_token_id == ours.eod_id
