"""Real vocabularies through megactllm (issue 31): Qwen2's 151k byte-level BPE (no BOS, but an
ordinary `<s>` entry, id 128245) and Llama-3's (BOS <|begin_of_text|>), rebuilt from llama.cpp's
vocab-only GGUFs (tests/real_vocab.py) and checked against llama.cpp's reference tokenizations.

A special token is only one the tokenizer marks; each consumer follows from that one answer: the
tokenizer's ids, both evaluation backends (equal to lm-eval on the HF original), the HF export's
tokenizer_config.json / config.json / generation_config.json, the GGUF and dataset metadata.
"""
import json
import shutil

import pytest
from bpe_fixtures import corpus_lines
from family_testing import tiny_hf_model
from real_vocab import VOCABS, build_tokenizer_dir, reference_tokenizations, vocab_files

from megactllm.convert import export_to_hf, import_from_hf
from megactllm.eval.evaluate import EvalOptions, build_backend, evaluate
from megactllm.parallel import destroy_parallel
from megactllm.tokenizer import load_tokenizer

QWEN_PLAIN_S = 128245  # "<s>" in Qwen's byte-level vocabulary: an ordinary token
# name: (family, embedding rows as the released models have them, BOS, EOS)
REAL = {"qwen2": ("qwen2", 151936, None, 151643), "llama-bpe": ("llama3", 128256, 128000, 128001)}
TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def real_files():
    return vocab_files()


@pytest.fixture(scope="module")
def tokenizer_dirs(real_files, tmp_path_factory):
    """{name: directory as the model ships it}, and {name + "-bare": tokenizer.json alone}."""
    root = tmp_path_factory.mktemp("real_vocab")
    dirs = {name: build_tokenizer_dir(real_files, name, root / name) for name in VOCABS}
    for name in VOCABS:
        (root / f"{name}-bare").mkdir()
        shutil.copy(dirs[name] / "tokenizer.json", root / f"{name}-bare" / "tokenizer.json")
        dirs[f"{name}-bare"] = root / f"{name}-bare"
    return dirs


@pytest.fixture(scope="module")
def imported(tokenizer_dirs, tmp_path_factory):
    """{name: (HF original, its import)}: a tiny random model of the family with the real vocabulary."""
    root = tmp_path_factory.mktemp("real_vocab_models")
    out = {}
    for name, (family, rows, _, _) in REAL.items():
        hf = root / f"hf_{name}"
        tiny_hf_model(family, rows, **TINY).save_pretrained(hf)
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer_dirs[name] / file, hf / file)
        out[name] = (hf, import_from_hf(hf, root / f"ckpt_{name}", progress_stream=None).checkpoint)
    return out


@pytest.mark.parametrize("name", VOCABS)
def test_rebuilt_vocabularies_tokenize_as_llama_cpps_references(real_files, tokenizer_dirs, name):
    from transformers import AutoTokenizer

    ours = load_tokenizer("huggingface", str(tokenizer_dirs[name]))
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dirs[name]), local_files_only=True)
    cases = reference_tokenizations(real_files, name)
    assert len(cases) > 40 and any("\u4e00" <= ch <= "\u9fff" for text, _ in cases for ch in text)
    for text, ids in cases:
        assert ours.encode(text) == ids, text
        assert hf(text, add_special_tokens=False)["input_ids"] == ids, text


@pytest.mark.parametrize("name", ["qwen2", "qwen2-bare", "llama-bpe", "llama-bpe-bare"])
def test_only_tokens_the_tokenizer_marks_are_special(tokenizer_dirs, name):
    _, _, bos, eos = REAL[name.replace("-bare", "")]
    tok = load_tokenizer("huggingface", str(tokenizer_dirs[name]))
    assert tok.bos_id == bos, f"{name}: BOS {tok.bos_id} ({tok.id_to_token(tok.bos_id) if tok.bos_id else None})"
    assert tok.eod_id == eos
    if name.startswith("qwen2"):
        assert tok.token_to_id("<s>") == QWEN_PLAIN_S  # the plain entry is there, and is no BOS
        assert tok.pad_id == (eos if name == "qwen2" else None)  # named by tokenizer_config.json only
    assert tok.describe()["bos_id"] == bos  # what dataset metadata records


def _docs(shared_data, tmp_path, n=2):
    docs = [line for line in corpus_lines(shared_data, "heldout") if 80 < len(line) < 300][:n]
    path = tmp_path / "zh.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}, ensure_ascii=False) for d in docs) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("name", VOCABS)
def test_both_backends_score_a_real_vocabulary_as_lm_eval_scores_the_original(imported, shared_data, tmp_path,
                                                                              monkeypatch, name):
    from lm_eval.models.huggingface import HFLM

    hf_dir, checkpoint = imported[name]
    expected = HFLM(pretrained=str(hf_dir), batch_size=1, device="cpu", dtype="float32").prefix_token_id
    assert expected == (REAL[name][2] if REAL[name][2] is not None else REAL[name][3])  # BOS, else EOS
    try:
        parallel = build_backend(EvalOptions(model=str(checkpoint), tasks=["bpb"]))
        assert parallel.prefix_token_id == expected
    finally:
        destroy_parallel()
    monkeypatch.delenv("MASTER_PORT", raising=False)
    corpus = _docs(shared_data, tmp_path)
    figures = {}
    for backend, model in (("hf", hf_dir), ("parallel", checkpoint)):
        results = evaluate(EvalOptions(model=str(model), tasks=["bpb"], corpus=[str(corpus)], batch_size=4), stream=None)
        assert results["config"]["backend"] == backend
        figures[backend] = results["results"]["bpb_zh"]
    assert figures["hf"]["tokens"] == figures["parallel"]["tokens"] > 64
    assert abs(figures["hf"]["nll_nats"] - figures["parallel"]["nll_nats"]) <= 1e-6 * abs(figures["hf"]["nll_nats"])


@pytest.mark.parametrize("name", VOCABS)
def test_export_and_gguf_carry_the_originals_specials(imported, real_files, tmp_path, name):
    import gguf

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[serve]')")
    from transformers import AutoTokenizer

    from megactllm.convert.gguf import export_gguf

    hf_dir, checkpoint = imported[name]
    _, _, bos, eos = REAL[name]
    original = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    out = tmp_path / "hf"
    export_to_hf(checkpoint, out, progress_stream=None)
    tok_config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tok_config.get("bos_token") == (None if bos is None else "<|begin_of_text|>")
    for file in ("config.json", "generation_config.json"):
        assert json.loads((out / file).read_text(encoding="utf-8")).get("bos_token_id") == bos, file
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["eos_token_id"] == eos
    exported = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert exported.bos_token_id == original.bos_token_id == bos
    cases = reference_tokenizations(real_files, name)
    for text, ids in cases:
        assert exported(text)["input_ids"] == original(text)["input_ids"], text

    path = tmp_path / "model.gguf"
    export_gguf(checkpoint, path, "f32", progress_stream=None)
    fields = gguf.GGUFReader(str(path)).fields
    got = int(fields["tokenizer.ggml.bos_token_id"].parts[-1][0]) if "tokenizer.ggml.bos_token_id" in fields else None
    assert got == bos, f"GGUF BOS {got}"
    assert int(fields["tokenizer.ggml.eos_token_id"].parts[-1][0]) == eos
    assert bool(fields["tokenizer.ggml.add_bos_token"].parts[-1][0]) == (bos is not None)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text, ids in cases:
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == ids, text


def test_sft_rendering_with_the_real_qwen_vocabulary_equals_its_template(tokenizer_dirs):
    """Qwen's own chat template (from its GGUF) and megactllm's SFT tokenization give the same ids:
    no BOS is put before the conversation."""
    from transformers import AutoTokenizer

    from megactllm.tokenizer.chat_template import generation_prompt_tokens, tokenize_conversation

    ours = load_tokenizer("huggingface", str(tokenizer_dirs["qwen2"]))
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dirs["qwen2"]), local_files_only=True)
    messages = [{"role": "system", "content": "You are a helpful assistant"},
                {"role": "user", "content": "请介绍一下长城。"},
                {"role": "assistant", "content": "长城是中国古代的军事防御工程，绵延上万里。"}]
    sample = tokenize_conversation(ours, messages)
    expected = hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert sample.tokens.tolist() == expected and QWEN_PLAIN_S not in expected
    assert generation_prompt_tokens(ours, messages[:-1]) == \
        hf.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
