"""GGUF export of byte-level BPE tokenizers (tokenizer.ggml.model "gpt2"), checked by llama.cpp alone.

Qwen2's shape, its vocabulary extension (new merges ranked first; new words as added tokens) and
Llama-3's shape, each trained on the real corpus: llama.cpp (llama-cpp-python, vocab only) gives
the HF tokenizer's ids (AutoTokenizer on the model directory) for held-out Chinese text, English,
code, digits, whitespace runs, emoji and the chat tokens, and decodes them back to the text.
"""
import json
import re
import shutil
from pathlib import Path

import pytest
from bpe_fixtures import build_llama3_style_bpe, corpus_lines
from family_testing import tiny_hf_model

from megactllm.convert.errors import ConversionError
from megactllm.convert.gguf import export_gguf
from megactllm.convert.gguf.bpe_vocab import read_bpe_vocab

SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
PADDING = 29  # embedding rows past the tokenizer's ids (Qwen2.5's padded vocabulary)
REPO = Path(__file__).resolve().parents[1]
SPECIAL_TEXTS = [
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "价格是 1234567 元，增长 3.14159%，2024年10月1日 08:30",
    "a    b\n\n\n   \t c  \r\n  end   ",
    "  leading and trailing spaces   ",
    "emoji 👍🏻😀🇨🇳 表情 ❤️ 👨‍👩‍👧",
    "<|im_start|>system\n你是一个乐于助人的助手。<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>上一篇<|endoftext|>下一篇",
    "It's what they've said: we'll see, I'd think. DON'T SHOUT",
]


@pytest.fixture(scope="module")
def texts(shared_data):
    en = [json.loads(line)["text"] for line in
          (shared_data / "corpus" / "c4_demo_en.jsonl").read_text(encoding="utf-8").splitlines()[:30]]
    code = (REPO / "megactllm" / "convert" / "gguf" / "export.py").read_text(encoding="utf-8").split("\n\n\n")[:10]
    return corpus_lines(shared_data, "heldout")[:150] + en + code + SPECIAL_TEXTS


@pytest.fixture(scope="module")
def tokenizers_dirs(qwen_style_bpe_dir, shared_data, tmp_path_factory):
    from megactllm.tokenizer.extend_bpe import extend_bpe, frequent_new_words

    root = tmp_path_factory.mktemp("bpe_gguf_toks")
    words = frequent_new_words(corpus_lines(shared_data, "heldout")[:600], str(qwen_style_bpe_dir / "tokenizer.json"), 60)
    assert len(words) >= 30
    extend_bpe(str(qwen_style_bpe_dir), str(root / "merges"), pieces=words, user_defined=["<tool_call>"])
    extend_bpe(str(qwen_style_bpe_dir), str(root / "added"), pieces=words, user_defined=["<tool_call>"], method="added")
    return {"qwen2": qwen_style_bpe_dir, "qwen2-extended": root / "merges", "qwen2-extended-added": root / "added",
            "llama3": build_llama3_style_bpe(shared_data, root / "llama3")}


def hf_dir_with_gguf(tok_dir: Path, out: Path, family: str = "qwen2") -> tuple[Path, Path]:
    """A tiny HF model of the family with PADDING rows past the tokenizer's ids, its tokenizer files
    beside it, and its f32 GGUF."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    tiny_hf_model(family, ids + PADDING, **SMALL).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, out / name)
    gguf_file = out.with_suffix(".gguf")
    export_gguf(out, gguf_file, "f32", progress_stream=None)
    return out, gguf_file


def _field(reader, key):
    from gguf import GGUFValueType

    f = reader.fields[key]
    if f.types[0] == GGUFValueType.ARRAY:
        return [f.parts[i].tolist()[0] if f.types[-1] != GGUFValueType.STRING else bytes(f.parts[i]).decode()
                for i in f.data]
    value = f.parts[-1]
    return bytes(value).decode() if f.types[0] == GGUFValueType.STRING else value.tolist()[0]


@pytest.mark.parametrize("name", ["qwen2", "qwen2-extended", "qwen2-extended-added", "llama3"])
def test_llama_cpp_alone_tokenizes_as_the_hf_tokenizer(name, tokenizers_dirs, texts, tmp_path, llama_cpp_module):
    import gguf
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    family = "llama3" if name == "llama3" else "qwen2"
    hf_dir, gguf_file = hf_dir_with_gguf(tokenizers_dirs[name], tmp_path / "hf", family)
    data = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ids = Tokenizer.from_file(str(hf_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)

    reader = gguf.GGUFReader(str(gguf_file))
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == ("llama-bpe" if name == "llama3" else "qwen2")
    tokens, types = _field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == ids + PADDING == reader.tensors[0].shape[-1]
    assert types[ids:] == [gguf.TokenType.UNUSED] * PADDING
    for added in data["added_tokens"]:
        assert tokens[added["id"]] == added["content"]
        assert types[added["id"]] == (gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED)
    merges = _field(reader, "tokenizer.ggml.merges")
    assert merges == [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    specials = {k: _field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "eot")
                if f"tokenizer.ggml.{k}_token_id" in reader.fields}
    if name == "llama3":
        assert [tokens[specials[k]] for k in ("bos", "eos", "eot")] == ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    else:
        assert "bos" not in specials and [tokens[specials[k]] for k in ("eos", "eot")] == ["<|endoftext|>", "<|im_end|>"]
    assert _field(reader, "tokenizer.ggml.add_bos_token") == (name == "llama3")

    llm = llama_cpp_module.Llama(model_path=str(gguf_file), vocab_only=True, verbose=False)
    hf = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    differ, undecoded = [], []
    for text in texts:
        # add_bos=True: llama.cpp adds what the file says the tokenizer adds (Llama-3 its BOS, Qwen nothing).
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        if theirs != hf(text)["input_ids"]:
            differ.append(text[:40])
        plain = theirs[1:] if name == "llama3" else theirs
        if llm.detokenize(plain, special=True).decode("utf-8") != text or hf.decode(plain) != text:
            undecoded.append(text[:40])
    print(f"{name}: llama.cpp equals the HF tokenizer on {len(texts) - len(differ)} of {len(texts)} texts, "
          f"decodes {len(texts) - len(undecoded)} back")
    assert not differ, f"{len(differ)} of {len(texts)} texts tokenize differently, e.g. {differ[:3]}"
    assert not undecoded, f"{len(undecoded)} texts do not decode back, e.g. {undecoded[:3]}"
    if name.startswith("qwen2-extended"):  # the new words are really used by llama.cpp
        assert max(max(llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) or [0]) for t in texts) >= \
            Tokenizer.from_file(str(tokenizers_dirs["qwen2"] / "tokenizer.json")).get_vocab_size(with_added_tokens=True)


@pytest.fixture(scope="module")
def llama_cpp_module():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[serve]')")


def _edited(tok_dir: Path, out: Path, edit) -> Path:
    data = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    edit(data)
    out.mkdir()
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return out / "tokenizer.json"


def test_a_tokenizer_llama_cpp_cannot_run_is_refused_by_name(qwen_style_bpe_dir, tmp_path):
    def other_regex(data):
        data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\p{N}+|\s+|[^\s\p{L}\p{N}]+"

    def gpt2_byte_level(data):
        data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}

    def ignore_merges(data):
        data["model"]["ignore_merges"] = True

    def lowercase(data):
        data["normalizer"] = {"type": "Lowercase"}

    cases = [(other_regex, r"pre-tokenizer regex .* is neither Qwen2's nor Llama-3's"),
             (gpt2_byte_level, r"pre_tokenizer is \['ByteLevel'\]"),
             (ignore_merges, r"model.ignore_merges is True, but llama.cpp's 'qwen2' pre-tokenizer runs with ignore_merges False"),
             (lowercase, r"normalizer 'Lowercase'")]
    for i, (edit, message) in enumerate(cases):
        path = _edited(qwen_style_bpe_dir, tmp_path / str(i), edit)
        with pytest.raises(ConversionError, match=re.escape(f"{path}: ") + message):
            read_bpe_vocab(path)
    assert read_bpe_vocab(qwen_style_bpe_dir / "tokenizer.json").pre == "qwen2"
