"""Both evaluation backends build lm-eval's requests for every tokenizer (issue 21).

A text read with no context (bits per byte's first window) starts from one token, chosen by
lm-eval 0.4's HFLM.prefix_token_id: the tokenizer's BOS, else its EOS. The parallel backend reads
the checkpoint's copy of the tokenizer, the HF backend the original's; both must resolve the same
ids (a Qwen2.5-Instruct's eos <|im_end|> is named only in tokenizer_config.json), and bits per byte
of a Qwen2-family checkpoint must equal its HF original's.
"""
import json
import os
import shutil

import pytest
from bpe_fixtures import corpus_lines
from eval_testing import save_tiny_llama
from family_testing import tiny_hf_model

from megactllm.convert import import_from_hf
from megactllm.eval.evaluate import EvalOptions, build_backend, evaluate
from megactllm.eval.requests import rolling_requests
from megactllm.parallel import destroy_parallel

TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
QWEN_SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)


def _bpe_dir(base, out, eos, bos=None, bos_template=False):
    """The Qwen-style BPE fixture with tokenizer_config naming `eos`/`bos`; with bos_template the
    tokenizer.json adds BOS itself, as Llama-3's does (<|begin_of_text|>, <|end_of_text|> added)."""
    from tokenizers import Tokenizer, processors

    out.mkdir(parents=True)
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    if bos_template:
        tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, bos_id)]),
        ])
    tok.save(str(out / "tokenizer.json"))
    config = json.loads((base / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.update(eos_token=eos, bos_token=bos)
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return out, tok.get_vocab_size(with_added_tokens=True)


def _hf_model_dir(out, family, rows, tokenizer_dir, **widths):
    tiny_hf_model(family, rows, **widths).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    return out


def _as_llama2_download(hf_dir):
    """The tokenizer files as a LLaMA-2 download ships them: add_bos_token true and a post-processor
    that puts <s> before the text (transformers 5 saves neither for a LlamaTokenizer of its own)."""
    config = json.loads((hf_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}), encoding="utf-8")
    tok = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    tok["post_processor"] = {
        "type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    (hf_dir / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    return hf_dir


@pytest.fixture(scope="module")
def tokenizer_models(tmp_path_factory, qwen_style_bpe_dir, sp_model_path):
    """{name: (HF original, imported checkpoint)} for each kind of tokenizer, on a tiny LLaMA."""
    root = tmp_path_factory.mktemp("prefix")
    models = {"sentencepiece_bos": save_tiny_llama(root / "sp", sp_model_path, hidden_size=16, intermediate_size=32),
              "llama2_adds_bos": _as_llama2_download(
                  save_tiny_llama(root / "llama2", sp_model_path, hidden_size=16, intermediate_size=32))}
    for name, eos, bos, template in [("qwen_base", "<|endoftext|>", None, False),
                                     ("qwen_instruct", "<|im_end|>", None, False),
                                     ("llama3_bos", "<|end_of_text|>", "<|begin_of_text|>", True)]:
        tok_dir, size = _bpe_dir(qwen_style_bpe_dir, root / f"tok_{name}", eos, bos, template)
        models[name] = _hf_model_dir(root / name, "llama3", size, tok_dir, **TINY)
    return {name: (hf, import_from_hf(hf, root / f"ckpt_{name}", progress_stream=None).checkpoint)
            for name, hf in models.items()}


def _lm_eval_prefix_and_tokens(hf_dir, text):
    """lm-eval's own HFLM on the HF original: its prefix_token_id and tok_encode(text)."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(hf_dir), batch_size=1, device="cpu", dtype="float32")
    return lm.prefix_token_id, lm.tok_encode(text), lm.max_length


TEXT = "中文语言模型的评测，按字节计算比特数。Bits per byte."


@pytest.mark.parametrize("name", ["sentencepiece_bos", "llama2_adds_bos", "qwen_base", "qwen_instruct", "llama3_bos"])
def test_both_backends_start_from_lm_evals_prefix_token(tokenizer_models, name):
    from lm_eval import utils as lm_utils

    hf_dir, checkpoint = tokenizer_models[name]
    expected, lm_tokens, _ = _lm_eval_prefix_and_tokens(hf_dir, TEXT)
    hf = build_backend(EvalOptions(model=str(hf_dir), tasks=["bpb"]))
    try:
        parallel = build_backend(EvalOptions(model=str(checkpoint), tasks=["bpb"]))
        parallel_prefix, parallel_tokens = parallel.prefix_token_id, parallel.encode(TEXT)
    finally:
        destroy_parallel()
    assert hf.prefix_token_id == expected
    assert parallel_prefix == expected, f"{name}: the checkpoint's tokenizer starts from {parallel_prefix}, lm-eval from {expected}"
    if name in ("sentencepiece_bos", "llama2_adds_bos"):
        # SentencePiece: BOS first exactly where transformers adds it to the original (a LLaMA-2
        # download; not a LlamaTokenizer transformers 5 saved itself). The import records which.
        assert (lm_tokens[0] == expected) == (name == "llama2_adds_bos")
        assert hf.encode(TEXT) == lm_tokens and parallel_tokens == lm_tokens
        return
    # Byte-level BPE: the same ids as lm-eval's tok_encode, so the same rolling windows as
    # lm-eval's get_rolling_token_windows + make_disjoint_window (lm_eval/utils.py).
    assert hf.encode(TEXT) == lm_tokens and parallel_tokens == lm_tokens
    window = 8
    lm_windows = [tuple(map(tuple, lm_utils.make_disjoint_window(w)))
                  for w in lm_utils.get_rolling_token_windows(lm_tokens, expected, window, 1)]
    ours = rolling_requests(parallel_tokens, parallel_prefix, window, window)
    # lm-eval's context holds the window's inputs up to the first scored token, ours the same prefix
    assert [(r.context, r.continuation) for r in ours] == lm_windows


def _docs(shared_data, tmp_path, n=3):
    docs = [line for line in corpus_lines(shared_data, "heldout") if 60 < len(line) < 400][:n]
    path = tmp_path / "zh.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}, ensure_ascii=False) for d in docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def qwen2_instruct(tmp_path_factory, qwen_style_bpe_dir):
    """A tiny Qwen2 (QKV biases, padded vocabulary) with a Qwen2.5-Instruct-like tokenizer (eos
    <|im_end|>, no BOS), and its import."""
    root = tmp_path_factory.mktemp("qwen2_bpb")
    tok_dir, size = _bpe_dir(qwen_style_bpe_dir, root / "tok", "<|im_end|>")
    hf = _hf_model_dir(root / "hf", "qwen2", size + 37, tok_dir, **QWEN_SMALL)
    return hf, import_from_hf(hf, root / "ckpt", progress_stream=None).checkpoint


def test_bpb_of_a_qwen2_checkpoint_equals_its_hf_original(qwen2_instruct, shared_data, tmp_path, monkeypatch):
    hf, checkpoint = qwen2_instruct
    corpus = _docs(shared_data, tmp_path)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    figures = {}
    for name, model in (("hf", hf), ("parallel", checkpoint)):
        results = evaluate(EvalOptions(model=str(model), tasks=["bpb"], corpus=[str(corpus)], batch_size=4), stream=None)
        figures[name] = results["results"]["bpb_zh"]
        assert results["config"]["backend"] == name
        # In-process evaluation leaves no rendezvous port behind for the processes a caller starts next.
        assert "MASTER_PORT" not in os.environ
    hf_nll, parallel_nll = figures["hf"]["nll_nats"], figures["parallel"]["nll_nats"]
    print(f"bpb nll: hf {hf_nll:.6f} nats, parallel {parallel_nll:.6f} nats over {figures['hf']['tokens']} tokens")
    assert figures["hf"]["tokens"] == figures["parallel"]["tokens"] > 3 * 64  # several 64-token windows a document
    assert abs(hf_nll - parallel_nll) <= 1e-6 * abs(hf_nll)
    assert abs(figures["hf"]["bits_per_byte"] - figures["parallel"]["bits_per_byte"]) <= 1e-6 * figures["hf"]["bits_per_byte"]


def test_cmmlu_loglikelihoods_of_a_qwen2_checkpoint_equal_its_hf_original(qwen2_instruct, shared_data):
    hf, checkpoint = qwen2_instruct
    responses = {}
    for name, model in (("hf", hf), ("parallel", checkpoint)):
        opts = EvalOptions(model=str(model), tasks=["cmmlu"], data_dir=str(shared_data / "eval"), subjects=["agronomy"],
                           shots=1, limit=3, log_samples=True, batch_size=4)
        samples = evaluate(opts, stream=None)["samples"]["cmmlu_agronomy"]
        responses[name] = [ll for s in samples for ll in s["response"]]
    assert len(responses["hf"]) == 12
    assert len({round(ll, 3) for ll in responses["hf"]}) > 6  # the model tells choices apart
    assert max(abs(a - b) for a, b in zip(responses["hf"], responses["parallel"])) < 1e-4


def test_a_llama2_originals_bos_survives_export_and_gguf(tokenizer_models, tmp_path):
    """The import's record of what the original adds reaches the HF export (AutoTokenizer adds BOS
    as the original's did) and the GGUF's add_bos_token; a checkpoint whose original adds none
    (and megactllm's own) exports without."""
    import gguf
    from transformers import AutoTokenizer

    from megactllm.convert import export_to_hf
    from megactllm.convert.gguf import export_gguf

    for name, adds in (("llama2_adds_bos", True), ("sentencepiece_bos", False)):
        hf_dir, checkpoint = tokenizer_models[name]
        original = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
        export_to_hf(checkpoint, tmp_path / name, progress_stream=None)
        exported = AutoTokenizer.from_pretrained(str(tmp_path / name), local_files_only=True)
        assert exported(TEXT)["input_ids"] == original(TEXT)["input_ids"]
        assert (exported(TEXT)["input_ids"][0] == original.bos_token_id) == adds
        export_gguf(checkpoint, tmp_path / f"{name}.gguf", "f32", progress_stream=None)
        field = gguf.GGUFReader(str(tmp_path / f"{name}.gguf")).fields["tokenizer.ggml.add_bos_token"]
        assert bool(field.parts[-1][0]) == adds
