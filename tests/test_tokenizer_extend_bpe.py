"""Vocabulary extension of a byte-level BPE tokenizer (Qwen2's shape), measured on the real corpus."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bpe_fixtures import corpus_lines
from megactllm.errors import UserError
from megactllm.tokenizer import extension_metrics as m
from megactllm.tokenizer.extend_bpe import BPEExtensionError, extend_bpe, frequent_new_words

REPO = Path(__file__).resolve().parents[1]
PLAIN = [
    "The model was trained on 1,254.68B tokens in 2024!", "def f(x):\n    return x ** 2  # square\n",
    "3.14159 0x7fff 12345678901234567890", "a  b\t\tc\n\n\n   d   ", "emoji 😀👨‍👩‍👧‍👦🇨🇳 ❤️",
    "if (a != b) { printf(\"%d\\n\", a); }",
]


@pytest.fixture(scope="module")
def bpe_dir(qwen_style_bpe_dir):
    return qwen_style_bpe_dir


@pytest.fixture(scope="module")
def words(shared_data, bpe_dir):
    return frequent_new_words(corpus_lines(shared_data, "train")[:900], str(bpe_dir / "tokenizer.json"), top_k=300)


@pytest.fixture(scope="module")
def extended(bpe_dir, words, tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe") / "extended"
    return extend_bpe(str(bpe_dir), str(out), pieces=words, user_defined=["<|im_start|>", "<tool_call>"])


def _load(directory):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))


def test_extension_keeps_old_ids_and_plain_text(bpe_dir, words, extended, shared_data):
    old, new = _load(bpe_dir), _load(extended.output_dir)
    assert len(words) == 300 and extended.new_size > extended.old_size + 300
    assert m.changed_ids(old, new) == []
    assert new.token_to_id("<tool_call>") == extended.old_size  # user-defined first, the chat token already there
    english = [json.loads(line)["text"] for line in (shared_data / "corpus" / "c4_demo_en.jsonl").read_text().splitlines()[:100]]
    code = [p.read_text(encoding="utf-8") for p in sorted((REPO / "megactllm" / "common").glob("*.py"))]
    plain = [t for t in PLAIN + english + code if not any(w in t for w in words)]
    assert len(plain) > 100 and m.changed_texts(old, new, plain) == []
    chinese = corpus_lines(shared_data, "heldout")[:400]
    assert m.round_trip_failures(new, chinese + plain) == []


def test_new_words_are_one_token_in_other_text(bpe_dir, words, extended, shared_data):
    old, new = _load(bpe_dir), _load(extended.output_dir)
    chinese = corpus_lines(shared_data, "heldout")
    hits = m.single_token_rate(new, words, chinese)
    assert hits.occurrences > 1000 and hits.rate >= 0.9, (hits.rate, sorted(hits.misses.items(), key=lambda kv: -kv[1])[:5])
    assert m.tokens_per_char(new, chinese) < m.tokens_per_char(old, chinese)
    # Appended after the old merges, old merges join a word's edges to its neighbours: measured worse.
    last = extend_bpe(str(bpe_dir), str(Path(extended.output_dir).parent / "last"), pieces=words, method="merges-last")
    assert m.single_token_rate(_load(last.output_dir), words, chinese).rate < hits.rate
    old_rate, new_rate = m.encode_throughputs([old, new], chinese[:300], repeats=7)
    assert new_rate >= 0.9 * old_rate, (new_rate, old_rate)


def test_output_loads_in_transformers(extended, words):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(extended.output_dir)
    text = f"<|im_start|>user\n{words[0]}和{words[1]}<|im_end|>"
    assert len(hf) == extended.new_size
    assert hf.decode(hf(text)["input_ids"]) == text
    assert hf.convert_tokens_to_ids("<tool_call>") == extended.old_size


def test_bad_requests_are_named(tmp_path, bpe_dir, words):
    with pytest.raises(BPEExtensionError, match=r"holds no tokenizer\.json"):
        extend_bpe(str(tmp_path), str(tmp_path / "out"), pieces=["大模型"])
    with pytest.raises(BPEExtensionError, match="already in the vocabulary"):
        extend_bpe(str(bpe_dir), str(tmp_path / "out"), pieces=["中国"])
    with pytest.raises(BPEExtensionError, match="cut by the pre-tokenizer"):
        extend_bpe(str(bpe_dir), str(tmp_path / "out"), pieces=["大模型2"])
    (tmp_path / "bad.txt").write_text("大模型\n鲲鹏 大鹏\n", encoding="utf-8")
    cli = [sys.executable, str(REPO / "tools" / "train_tokenizer.py"), "extend", "--model", str(bpe_dir),
           "--output", str(tmp_path / "out")]
    run = subprocess.run(cli + ["--pieces-file", str(tmp_path / "bad.txt")], capture_output=True, text=True)
    assert run.returncode == 2 and "bad.txt:2: '鲲鹏 大鹏' holds whitespace" in run.stderr, run.stderr
    (tmp_path / "latin1.txt").write_bytes("大模型\n".encode("utf-8") + b"\xe9t\xe9\n")
    run = subprocess.run(cli + ["--pieces-file", str(tmp_path / "latin1.txt")], capture_output=True, text=True)
    assert run.returncode == 2 and "latin1.txt is not UTF-8" in run.stderr, run.stderr
    assert issubclass(BPEExtensionError, UserError)


def test_cli_extends_from_corpus(tmp_path, bpe_dir, shared_data):
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join(corpus_lines(shared_data, "heldout")[:300]), encoding="utf-8")
    run = subprocess.run([sys.executable, str(REPO / "tools" / "train_tokenizer.py"), "extend", "--model", str(bpe_dir),
                          "--output", str(tmp_path / "out"), "--from-corpus", str(corpus), "--top-k", "50",
                          "--user-defined", "<|im_start|>", "<|im_end|>"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "50 frequent words" in run.stdout
    new = _load(tmp_path / "out")
    assert new.get_vocab_size(with_added_tokens=True) > _load(bpe_dir).get_vocab_size(with_added_tokens=True) + 50
