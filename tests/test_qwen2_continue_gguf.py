"""Issue 21's whole route for a Qwen2.5-shaped model, by the commands a user types.

A tiny Qwen2ForCausalLM made by transformers (non-zero QKV biases, tied embedding with padding rows
past the tokenizer's ids) with a Qwen-style byte-level BPE tokenizer.json beside it: `megactllm
convert import` (for TP2), `megactllm tokenize` real Chinese text with that tokenizer, continued
pretraining at TP2, saved and resumed, `megactllm convert export` to HF (Qwen2ForCausalLM,
AutoTokenizer loads it), `megactllm export-gguf` f32 from the checkpoint; llama.cpp tokenizes the
Chinese text as the HF tokenizer does and its logits are transformers' within 1e-3.
"""
import json
import re
import shutil
import time

import numpy as np
import pytest
import torch
from bpe_fixtures import corpus_lines
from entry_utils import launch
from family_testing import tiny_hf_model

SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=64, initializer_range=0.1)
SEQ = 32


def megactllm(*args):
    """`megactllm ARGS` in this process (the console script's own main; saves an interpreter start)."""
    from megactllm.cli import main

    assert main([str(a) for a in args]) == 0, args


def _train_args(root, ckpt, data, tok, iters):
    return [f"checkpoint.pretrained={ckpt}", f"data.data_path=[{data}]", "data.tokenizer_type=huggingface",
            f"data.tokenizer_model={tok}", f"model.seq_length={SEQ}", "parallel.tensor_model_parallel_size=2",
            f"train.duration={iters} iterations", "checkpoint.interval=2", f"checkpoint.save={root}/run", f"checkpoint.load={root}/run",
            "train.global_batch_size=4", "train.micro_batch_size=2", "logging.interval=1", "validation.interval=0",
            "validation.iters=0", f"logging.dir={root}/log", "data.split=100,0,0", f"data.data_cache_path={root}/cache",
            "optim.lr=3e-3", "optim.min_lr=3e-4", "optim.lr_warmup_iters=1"]


@pytest.fixture(scope="module")
def route(qwen_style_bpe_dir, shared_data, tmp_path_factory):
    from tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("qwen2_route")
    ids = Tokenizer.from_file(str(qwen_style_bpe_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    rows = -(-(ids + 1) // 64) * 64  # padded as Qwen2.5's embedding is
    hf_in = root / "hf_in"
    model = tiny_hf_model("qwen2", rows, **SMALL)
    assert float(model.model.layers[0].self_attn.q_proj.bias.abs().min()) > 0
    model.save_pretrained(hf_in)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(qwen_style_bpe_dir / name, hf_in / name)
    clock = [time.monotonic()]
    megactllm("convert", "import", hf_in, root / "ckpt", "--target-tp", 2)

    texts = corpus_lines(shared_data, "heldout")[:200]
    (root / "zh.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
                                   encoding="utf-8")
    megactllm("tokenize", "--input", root / "zh.jsonl", "--tokenizer-type", "huggingface", "--tokenizer-model", hf_in,
              "--append-eod", "--output-prefix", root / "data" / "zh", "--workers", 1, "--quiet")
    data = root / "data" / "zh_text_document"
    tok = root / "ckpt" / "iter_0000000" / "tokenizer" / "tokenizer.json"
    assert tok.is_file()
    first = launch(_train_args(root, root / "ckpt" / "iter_0000000", data, tok, 2), timeout=600)
    assert first.returncode == 0, first.stdout[-4000:]
    resumed = launch(_train_args(root, root / "ckpt" / "iter_0000000", data, tok, 4), timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    megactllm("convert", "export", root / "run", root / "hf_out")
    megactllm("export-gguf", root / "run", root / "out-f32.gguf", "--outtype", "f32")
    print(f"route: {time.monotonic() - clock[0]:.0f}s")
    return dict(root=root, rows=rows, ids=ids, texts=texts, first=first.stdout, resumed=resumed.stdout, hf_in=hf_in)


def test_continued_pretraining_at_tp2_resumes_and_exports(route):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = route["root"]
    meta = json.loads((root / "run" / "iter_0000004" / "megactllm.json").read_text())
    assert meta["parallel"]["tensor_model_parallel_size"] == 2 and meta["tokenizer"]["type"] == "huggingface"
    assert f"initialised weights from {root / 'ckpt' / 'iter_0000000'}" in route["first"], route["first"][-2000:]
    assert re.search(r"resumed from \S*iter_0000002: iteration 2, 8 samples", route["resumed"]), route["resumed"][-2000:]
    model = AutoModelForCausalLM.from_pretrained(root / "hf_out", local_files_only=True)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == route["rows"]
    before = AutoModelForCausalLM.from_pretrained(route["hf_in"], local_files_only=True)
    bias = "model.layers.0.self_attn.q_proj.bias"
    trained, start = model.state_dict()[bias], before.state_dict()[bias]
    assert not torch.equal(trained, start) and float((trained - start).abs().max()) < 0.5  # trained, from the import
    tok = AutoTokenizer.from_pretrained(root / "hf_out", local_files_only=True)
    assert len(tok) == route["ids"]


def llama_cpp_against_transformers(hf_dir, gguf_file, texts, ids):
    """(texts llama.cpp alone tokenizes as the HF tokenizer, max |logit diff| over the tokenizer's ids
    on the first three texts, the largest id llama.cpp produced)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[serve]')")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    vocab = llama_cpp.Llama(model_path=str(gguf_file), vocab_only=True, verbose=False)
    tokenized = [vocab.tokenize(t.encode("utf-8"), add_bos=True, special=True) for t in texts]
    same = sum(mine == hf(t)["input_ids"] for mine, t in zip(tokenized, texts))
    model = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True, dtype=torch.float32).eval()
    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=64, logits_all=True, verbose=False, n_threads=2,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    worst = 0.0
    for text in texts[:3]:
        tokens = hf(text)["input_ids"][:60]
        with torch.no_grad():
            theirs = model(torch.tensor([tokens])).logits[0].numpy()
        llm.reset()
        llm.eval(tokens)
        ours = np.array(llm.scores[: len(tokens)], dtype=np.float32)
        worst = max(worst, float(np.abs(ours[:, :ids] - theirs[:, :ids]).max()))
    return same, worst, max(max(t) for t in tokenized)


def test_llama_cpp_tokenizes_and_scores_as_transformers(route):
    root, texts = route["root"], route["texts"]
    same, worst, _ = llama_cpp_against_transformers(root / "hf_out", root / "out-f32.gguf", texts, route["ids"])
    print(f"qwen2 TP2 continued: llama.cpp tokenizes {same} of {len(texts)} Chinese texts as the HF tokenizer; "
          f"f32 GGUF vs transformers max |logit diff| = {worst:.2e}")
    assert same == len(texts)
    assert worst < 1e-3


def test_extended_tokenizer_imports_and_reaches_llama_cpp(route, qwen_style_bpe_dir, shared_data):
    """The same model imported with its extended tokenizer (Chinese words as new merges, new rows in the
    padding), exported to HF and to GGUF: llama.cpp uses the new words as the HF tokenizer does."""
    from megactllm.tokenizer.extend_bpe import extend_bpe, frequent_new_words

    root, texts = route["root"], route["texts"]
    words = frequent_new_words(corpus_lines(shared_data, "heldout")[:600], str(qwen_style_bpe_dir / "tokenizer.json"), 8)
    result = extend_bpe(str(qwen_style_bpe_dir), str(root / "tok_ext"), pieces=words, user_defined=["<tool_call>"])
    assert route["ids"] < result.new_size <= route["rows"]
    # --tokenizer takes the directory `train-tokenizer extend` wrote, as README section 5 shows.
    megactllm("convert", "import", route["hf_in"], root / "ckpt_ext", "--target-tp", 2, "--tokenizer", root / "tok_ext")
    megactllm("convert", "export", root / "ckpt_ext", root / "hf_ext")
    megactllm("export-gguf", root / "ckpt_ext", root / "ext-f32.gguf", "--outtype", "f32")
    same, worst, largest = llama_cpp_against_transformers(root / "hf_ext", root / "ext-f32.gguf", texts, result.new_size)
    print(f"qwen2 extended (+{result.new_size - route['ids']} ids): llama.cpp tokenizes {same} of {len(texts)} Chinese "
          f"texts as the HF tokenizer; f32 GGUF vs transformers max |logit diff| = {worst:.2e}")
    assert same == len(texts) and largest >= route["ids"]
    assert worst < 1e-3


def test_tokenizer_directory_without_a_tokenizer_is_named(route, capsys):
    from megactllm.cli import main

    empty = route["root"] / "no_tokenizer"
    empty.mkdir()
    assert main(["convert", "import", str(route["hf_in"]), str(route["root"] / "ckpt_bad"), "--tokenizer", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"--tokenizer {empty} is a directory without tokenizer.model or tokenizer.json" in err
    assert not (route["root"] / "ckpt_bad").exists()
