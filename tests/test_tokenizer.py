"""The tokenizer interface, SentencePiece training and vocabulary extension on the real corpus."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from megactllm.tokenizer import load_tokenizer
from megactllm.tokenizer.extend import (
    extend_sentencepiece,
    frequent_unsplit_words,
    load_model_proto,
)
from megactllm.tokenizer.train import TokenizerTrainingSettings, train_sentencepiece

REPO = Path(__file__).resolve().parents[1]
MIXED = "人工智能正在改变世界。CT-LLM was trained on 1,254.68B tokens in 2024!"


def test_sentencepiece_interface(sp_model_path):
    tok = load_tokenizer("sentencepiece", str(sp_model_path))
    assert tok.tokenizer_type == "sentencepiece" and tok.model_path == str(sp_model_path)
    assert tok.vocab_size == 64000
    assert (tok.eod_id, tok.bos_id, tok.pad_id) == (2, 1, None)
    ids = tok.encode(MIXED)
    assert tok.bos_id not in ids and tok.eod_id not in ids
    assert tok.decode(ids) == MIXED
    assert tok.encode_batch([MIXED, "你好"]) == [ids, tok.encode("你好")]
    # UTF-8 bytes encode as their text does (preprocess hands plain jsonl texts over undecoded),
    # on one native thread or several.
    assert tok.accepts_utf8_bytes
    texts = [MIXED, "你好", " leading space", "emoji 😀 and \u3000 ideographic space", "x"] * 7
    for threads in (1, 3):
        tok.num_threads = threads
        assert tok.encode_batch([t.encode("utf-8") for t in texts]) == [tok.encode(t) for t in texts]
        assert tok.encode_batch([t.encode("utf-8") if i % 2 else t for i, t in enumerate(texts)]) == tok.encode_batch(texts)
    tok.num_threads = 1
    assert tok.token_to_id("</s>") == 2 and tok.id_to_token(2) == "</s>"
    assert tok.token_to_id("<|im_start|>") is None  # absent pieces are None, not <unk>
    with pytest.raises(IndexError):
        tok.id_to_token(64000)
    # Megatron's spellings of the type are accepted.
    assert load_tokenizer("GPTSentencePieceTokenizer", str(sp_model_path)).vocab_size == 64000


def test_bad_tokenizer_arguments(tmp_path, sp_model_path):
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        load_tokenizer("wordpiece", str(sp_model_path))
    with pytest.raises(FileNotFoundError):
        load_tokenizer("sentencepiece", str(tmp_path / "none.model"))
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        load_tokenizer("sentencepiece", str(tmp_path / "junk.model"))


def test_huggingface_interface(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<pad>"])
    hf.train_from_iterator([MIXED, "hello world, hello tokens", "你好世界"] * 20, trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|endoftext|>"}}))

    for path in (tmp_path, tmp_path / "tokenizer.json"):
        tok = load_tokenizer("huggingface", str(path))
        assert tok.eod_id == hf.token_to_id("<|endoftext|>") and tok.pad_id == hf.token_to_id("<pad>")
        assert tok.bos_id is None
        ids = tok.encode("<|im_start|>hello world")
        assert ids[0] == tok.token_to_id("<|im_start|>")
        assert tok.decode(tok.encode(MIXED)) == MIXED
        assert tok.encode_batch([MIXED, "hi"]) == [tok.encode(MIXED), tok.encode("hi")]
        assert tok.vocab_size == hf.get_vocab_size() and tok.token_to_id("<nope>") is None
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer("huggingface", str(tmp_path / "missing"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("tok")
    config = TokenizerTrainingSettings(
        input=[str(shared_data / "corpus" / "clue_small_zh.txt"), str(shared_data / "corpus" / "c4_demo_en.jsonl")],
        model_prefix=str(out / "zh"), vocab_size=3000, character_coverage=0.99, num_threads=2,
    )
    return train_sentencepiece(config)


def test_trained_model_has_ctllm_settings(trained):
    tok = load_tokenizer("sentencepiece", trained)
    assert tok.vocab_size == 3000
    assert [tok.id_to_token(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert (tok.bos_id, tok.eod_id, tok.pad_id) == (1, 2, 3)
    chat = "<|im_start|>user\n你好<|im_end|>"
    ids = tok.encode(chat)
    assert ids[0] == tok.token_to_id("<|im_start|>") and ids[-1] == tok.token_to_id("<|im_end|>")
    assert tok.decode(ids) == chat
    digits = tok.encode("2024")
    assert [tok.id_to_token(i) for i in digits] == ["2", "0", "2", "4"]
    rare = "龘😀 tab\there  two spaces"  # byte fallback and kept whitespace: nothing is lost
    assert tok.decode(tok.encode(rare)) == rare
    assert tok.token_to_id("<unk>") not in tok.encode(rare)
    proto = load_model_proto(trained)
    assert proto.trainer_spec.byte_fallback and proto.trainer_spec.split_digits
    assert proto.trainer_spec.model_type == proto.trainer_spec.BPE


def test_too_small_vocabulary_is_a_clear_error(tmp_path, shared_data):
    config = TokenizerTrainingSettings(input=[str(shared_data / "corpus" / "clue_small_zh.txt")], model_prefix=str(tmp_path / "t"),
                         vocab_size=500, character_coverage=0.9999, max_sentences=2000)
    with pytest.raises(ValueError, match="lower the character coverage"):
        train_sentencepiece(config)


@pytest.fixture(scope="module")
def corpus_words(shared_data, sp_model_path):
    lines = (shared_data / "corpus" / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines()[:400]
    words = frequent_unsplit_words(lines, load_tokenizer("sentencepiece", str(sp_model_path)), top_k=200, min_count=2)
    assert len(words) >= 100
    return words


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_extend_map_neo_with_corpus_words(tmp_path, sp_model_path, corpus_words, shared_data):
    model = tmp_path / "map_neo.model"
    model.write_bytes(Path(sp_model_path).read_bytes())
    before = sha(model)
    chars = ["鿏", "䶮", "龘"]  # rare characters that map_neo would byte-encode
    result = extend_sentencepiece(
        str(model), pieces=corpus_words + chars + ["人工智能"], user_defined=["<|im_start|>", "<|im_end|>"],
        control=["<|pad|>"],
    )
    assert sha(model) == before, "the old model is left untouched"
    assert result.output_path == str(tmp_path / "map_neo.extended.model")
    assert result.already_present == ["人工智能"]
    old, new = load_tokenizer("sentencepiece", str(model)), load_tokenizer("sentencepiece", result.output_path)
    assert new.vocab_size == 64000 + len(corpus_words) + len(chars) + 3

    old_proto, new_proto = load_model_proto(str(model)), load_model_proto(result.output_path)
    for i, piece in enumerate(old_proto.pieces):  # every old id keeps its piece and type
        assert (new_proto.pieces[i].piece, new_proto.pieces[i].type) == (piece.piece, piece.type)

    for token_id, piece, kind in result.added:
        assert new.token_to_id(piece) == token_id and token_id >= 64000
        if kind != "control":
            assert token_id in new.encode(f"我们{piece}。"), f"{piece} is not one token in context"
            assert new.decode(new.encode(f"看{piece}吧")) == f"看{piece}吧"
    pad = new.token_to_id("<|pad|>")
    assert pad not in new.encode("<|pad|>")  # control pieces never come from text
    chat = new.encode("<|im_start|>assistant\n你好<|im_end|>")
    assert new.token_to_id("<|im_start|>") in chat and new.token_to_id("<|im_end|>") in chat

    # Real text gets shorter and still decodes; text without new words is tokenized as before.
    docs = (shared_data / "corpus" / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines()[400:600]
    assert sum(map(len, new.encode_batch(docs))) < sum(map(len, old.encode_batch(docs)))
    assert all(new.decode(new.encode(d)) == old.decode(old.encode(d)) for d in docs)
    english = "The quick brown fox jumps over the lazy dog 12345."
    assert new.encode(english) == old.encode(english)


def test_extend_refuses_bad_requests(tmp_path, sp_model_path):
    with pytest.raises(ValueError, match="must not overwrite"):
        extend_sentencepiece(str(sp_model_path), pieces=["鿏"], output_path=str(sp_model_path))
    with pytest.raises(ValueError, match="whitespace"):
        extend_sentencepiece(str(sp_model_path), pieces=["两 个"], output_path=str(tmp_path / "x.model"))


def test_cli_train_and_extend(tmp_path, shared_data):
    corpus = shared_data / "corpus" / "c4_demo_en.jsonl"
    train = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train_tokenizer.py"), "train", "--input", str(corpus),
         "--model-prefix", str(tmp_path / "en"), "--vocab-size", "1200", "--threads", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert train.returncode == 0, train.stderr
    assert "1,200 pieces" in train.stdout and "<|im_start|>=4" in train.stdout
    ext = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train_tokenizer.py"), "extend", "--model", str(tmp_path / "en.model"),
         "--pieces", "中文", "汉字", "--control", "<|system|>"],
        capture_output=True, text=True, timeout=120,
    )
    assert ext.returncode == 0, ext.stderr
    tok = load_tokenizer("sentencepiece", str(tmp_path / "en.extended.model"))
    assert tok.vocab_size == 1203 and tok.token_to_id("汉字") == 1202  # control first, then pieces
    assert tok.encode("汉字") == [1202]
