"""SFT, DPO, export and serving for the Qwen2, Qwen3, Llama-3 and Mistral families, end to end (issue
21, item 2).

Per family: transformers makes a tiny model and saves it with its tokenizer; megactllm imports it;
real alpaca records are tokenized in the model's own chat format (ChatML's <|im_start|>/<|im_end|>
for Qwen2, Llama-3's header tokens and <|eot_id|>), the loss mask covering exactly the assistant's
content and the turn's end token; SFT from the imported weights, DPO on real pairs from the SFT
weights; export to the family's own HF class, whose tokenizer's template renders chats as training
did; the HF serving engine answers one /v1/chat/completions request on the exported directory.
Qwen3 (and Qwen3-MoE, all layers mixtures of experts) shares Qwen2's tokenizer and ChatML. Mistral's SentencePiece vocabulary has no ChatML tokens:
as for LLaMA-2 (the Linly route) they are added with `train-tokenizer extend --user-defined`, and the
HF tokenizer saved beside the model carries ChatML's template.
`qwen2_ext` walks the same path with Qwen2's tokenizer extended by Chinese words (issue 22: the
extended byte-level BPE goes everywhere the original went), its new ids in the padding rows.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from family_testing import tiny_hf_model, train_runs

from megactllm.testing import run_distributed
from megactllm.tokenizer import load_tokenizer
from megactllm.tokenizer.chat_formats import CHATML, LLAMA3, chat_format_of

pytest.importorskip("transformers")
pytest.importorskip("jinja2")

SEQ = 64
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=SEQ)
# family: (HF class, chat format, the format's end-of-turn token)
FAMILIES = {"qwen2": ("Qwen2ForCausalLM", CHATML, "<|im_end|>"), "llama3": ("LlamaForCausalLM", LLAMA3, "<|eot_id|>"),
            "qwen2_ext": ("Qwen2ForCausalLM", CHATML, "<|im_end|>"), "qwen3": ("Qwen3ForCausalLM", CHATML, "<|im_end|>"),
            "mistral": ("MistralForCausalLM", CHATML, "<|im_end|>"),
            "qwen3_moe": ("Qwen3MoeForCausalLM", CHATML, "<|im_end|>")}
BASE = {"qwen2": "qwen2", "llama3": "llama3", "qwen2_ext": "qwen2", "qwen3": "qwen3", "mistral": "mistral",
        "qwen3_moe": "qwen3_moe"}
FAMILY_OF = {"qwen2": "qwen2", "llama3": "llama", "qwen3": "qwen3", "mistral": "mistral",
             "qwen3_moe": "qwen3_moe"}  # megactllm's name, by BASE
SHAPE = {"qwen3": dict(head_dim=32)}  # Qwen3's head_dim is not hidden/heads (64/4)
SFT_RECORDS, DPO_PAIRS = 12, 8  # per language


def _tokenizer_dir(family: str, shared_data: Path, qwen_style_bpe_dir: Path, out: Path) -> Path:
    if family in ("qwen2", "qwen3", "qwen3_moe"):
        return qwen_style_bpe_dir
    if family == "mistral":
        from megactllm.convert.tokenizer_export import export_tokenizer
        from megactllm.tokenizer.extend import extend_sentencepiece

        # The real MAP-NEO SentencePiece model stands in for Mistral's; ChatML's tokens added as pieces.
        extend_sentencepiece(str(shared_data / "tokenizers" / "map_neo_sp.model"),
                             user_defined=list(CHATML.special_tokens), output_path=str(out / "chat_sp.model"))
        export_tokenizer("sentencepiece", out / "chat_sp.model", out / "mistral_tok", chat_template=CHATML.jinja)
        return out / "mistral_tok"
    from bpe_fixtures import build_llama3_style_bpe

    # Llama-3-Instruct's tokenizer_config.json carries its chat template; ours renders as it does.
    return build_llama3_style_bpe(shared_data, out / "llama3_tok", vocab_size=2000, max_lines=300,
                                  chat_template=LLAMA3.jinja)


def _write_records(shared_data: Path, kind: str, n: int, path: Path) -> str:
    stem = "sft/alpaca_{}_demo.json" if kind == "sft" else "dpo/dpo_{}_demo.json"
    records = []
    for lang in ("zh", "en"):
        some = json.loads((shared_data / stem.format(lang)).read_text(encoding="utf-8"))
        # The first n-2, and the two shortest of the first 200: whole conversations within SEQ too.
        short = sorted(some[n - 2:200], key=lambda r: len(json.dumps(r, ensure_ascii=False)))[:2]
        records += some[:n - 2] + short
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return str(path)


def _metrics(log_dir: Path) -> list[dict]:
    lines = (log_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, filter(None, lines)) if "metrics" in r and r.get("iteration")]


@pytest.fixture(scope="module", params=list(FAMILIES))
def path(request, shared_data, qwen_style_bpe_dir, tmp_path_factory):
    """The whole path for one family; returns what each step left behind."""
    from transformers import AutoTokenizer

    from megactllm.checkpoint import read_metadata
    from megactllm.convert import export_to_hf, import_from_hf
    from megactllm.data.chat.dpo_preprocess import preprocess_dpo
    from megactllm.data.chat.sft_preprocess import preprocess_sft

    family = request.param
    root = tmp_path_factory.mktemp(family)
    # 1. transformers makes the model and saves it with its tokenizer.
    tok_dir = _tokenizer_dir(BASE[family], shared_data, qwen_style_bpe_dir, root)
    hf_tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    # Qwen2 pads its embedding past the tokenizer's ids (151,936 rows for 151,665 ids): so do we.
    rows = -(-len(hf_tok) // 64) * 64 if BASE[family] in ("qwen2", "qwen3", "qwen3_moe") else len(hf_tok)
    if family == "qwen3_moe":  # every layer MoE (8 experts, top 2), random router weights
        from moe_testing import tiny_moe_model

        model = tiny_moe_model("qwen3_moe", rows, **{**TINY, "mlp_only_layers": []})
    else:
        model = tiny_hf_model(BASE[family], rows, **{**TINY, **SHAPE.get(family, {})})
    model.config.bos_token_id, model.config.eos_token_id = hf_tok.bos_token_id, hf_tok.eos_token_id
    model.save_pretrained(str(root / "hf"))
    hf_tok.save_pretrained(str(root / "hf"))

    # 2. import (the entry `megactllm convert import` calls), for qwen2_ext with Chinese words added.
    extended = None
    if family == "qwen2_ext":
        from bpe_fixtures import corpus_lines

        from megactllm.tokenizer.extend_bpe import extend_bpe, frequent_new_words

        words = frequent_new_words(corpus_lines(shared_data, "heldout")[:600], str(tok_dir / "tokenizer.json"), 8)
        extend_bpe(str(tok_dir), str(root / "tok_ext"), pieces=words)
        extended = root / "tok_ext"
    checkpoint = import_from_hf(root / "hf", root / "imported", tokenizer_file=extended, progress_stream=None).checkpoint
    meta = read_metadata(checkpoint)
    tokenizer = load_tokenizer(meta.tokenizer.get("type"), str(meta.tokenizer_file))

    # 3-4. SFT and DPO data with the model's own tokenizer, then SFT from the import, DPO from SFT.
    sft_prefix, dpo_prefix = str(root / "sft_data"), str(root / "dpo_data")
    preprocess_sft([_write_records(shared_data, "sft", SFT_RECORDS, root / "sft.json")], sft_prefix, tokenizer, seq_length=SEQ)
    preprocess_dpo([_write_records(shared_data, "dpo", DPO_PAIRS, root / "dpo.json")], dpo_prefix, tokenizer, seq_length=SEQ)
    common = [f"model.seq_length={SEQ}", f"model.max_position_embeddings={SEQ}", "train.duration=2 iterations",
              "train.global_batch_size=4", "train.micro_batch_size=2", "logging.interval=1", "validation.interval=0",
              "validation.iters=0", "optim.lr=1e-3", "optim.min_lr=0.0", "optim.lr_warmup_iters=0",
              "checkpoint.interval=2", "run.check_memory=false"]
    sft = common + ["train.stage=sft", f"checkpoint.pretrained={checkpoint}", f"data.train_data_path=['{sft_prefix}']",
                    f"checkpoint.save={root / 'sft'}", f"logging.dir={root / 'sft_log'}"]
    dpo = common + ["train.stage=dpo", f"checkpoint.pretrained={root / 'sft'}", f"data.train_data_path=['{dpo_prefix}']",
                    f"checkpoint.save={root / 'dpo'}", f"logging.dir={root / 'dpo_log'}"]
    (codes,) = run_distributed(train_runs, 1, [sft, dpo], timeout=300)

    # 5. export to the family's own class.
    if codes == [0, 0]:
        export_to_hf(root / "dpo", root / "export", progress_stream=None)
    return dict(family=family, root=root, checkpoint=checkpoint, tokenizer=tokenizer, codes=codes,
                sft_prefix=sft_prefix, dpo_prefix=dpo_prefix, old_ids=len(hf_tok),
                new_words=words if extended else [])


def _masked_runs(tokenizer, tokens, mask) -> list[str]:
    """The decoded text of each run of trained positions."""
    runs, i, mask = [], 0, list(mask) + [0]
    while i < len(tokens):
        if mask[i]:
            j = mask.index(0, i)
            runs.append(tokenizer.decode([int(t) for t in tokens[i:j]]))
            i = j
        else:
            i += 1
    return runs


def test_import_keeps_the_family_and_its_tokenizer(path):
    from megactllm.checkpoint import read_metadata

    model = read_metadata(path["checkpoint"]).model_config
    base = BASE[path["family"]]
    assert model.family == FAMILY_OF[base]
    assert model.add_qkv_bias == (base == "qwen2")
    assert model.qk_layernorm == (base in ("qwen3", "qwen3_moe"))
    assert (model.num_moe_experts, model.moe_router_topk) == ((8, 2) if base == "qwen3_moe" else (None, 2))
    assert model.rope_scaling == ("llama3" if base == "llama3" else None)
    # The extension's ids sit in the padding rows (the embedding keeps its size); each word is one token.
    tokenizer = path["tokenizer"]
    assert (tokenizer.vocab_size > path["old_ids"]) == bool(path["new_words"])
    assert all(len(tokenizer.encode(word)) == 1 for word in path["new_words"])
    assert chat_format_of(path["tokenizer"]) is FAMILIES[path["family"]][1]
    # The model's own template (transformers 5 saves it as chat_template.jinja) comes with the copy.
    original = load_tokenizer("huggingface", str(path["root"] / "hf"))
    assert path["tokenizer"].chat_template == original.chat_template
    assert (original.chat_template is not None) == (path["family"] in ("llama3", "mistral"))


def test_sft_mask_is_the_assistant_content_and_the_end_token(path):
    from megactllm.data.chat.records import sft_conversation
    from megactllm.data.chat.sft_indexed import ChatSampleReader

    _, fmt, end = FAMILIES[path["family"]]
    tokenizer = path["tokenizer"]
    reader = ChatSampleReader(path["sft_prefix"], "sft")
    assert reader.metadata["chat_template"] == fmt.name
    records = json.loads((path["root"] / "sft.json").read_text(encoding="utf-8"))
    whole, i = 0, 0
    for record in records:
        full = fmt.tokenize(tokenizer, sft_conversation(record))
        if not full.loss_mask[1:SEQ + 1].any():
            continue  # cut at SEQ with no answer token left: dropped, as the preprocessing says
        sample = reader.sample(i)
        i += 1
        tokens, mask = sample["tokens"].tolist(), np.asarray(sample["loss_mask"])
        assert tokens == full.tokens.tolist()[:len(tokens)] and np.array_equal(mask, full.loss_mask[:len(tokens)])
        if len(tokens) == len(full.tokens):  # not cut at SEQ: the whole answer and its end token
            whole += 1
            answer = [m["content"] for m in sft_conversation(record) if m["role"] == "assistant"]
            if fmt is LLAMA3:
                answer = [a.strip() for a in answer]
            assert _masked_runs(tokenizer, tokens, mask) == [a + end for a in answer]
        # Nothing outside the assistant turns is trained: no header, no user text, no BOS.
        assert mask.sum() and not mask[:tokens.index(tokenizer.token_to_id(end))].all()
    assert whole >= 2 and i == len(reader) >= len(records) // 2


def test_sft_then_dpo_from_the_imported_weights(path):
    assert path["codes"] == [0, 0]
    root = path["root"]
    sft, dpo = _metrics(root / "sft_log"), _metrics(root / "dpo_log")
    assert [r["iteration"] for r in sft] == [1, 2] and [r["iteration"] for r in dpo] == [1, 2]
    assert all(math.isfinite(v) for r in sft for v in r["metrics"].values())
    # Policy and reference both start from the SFT weights: loss log 2 and zero margin at step 1.
    assert dpo[0]["metrics"]["dpo loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert dpo[0]["metrics"]["rewards/margin"] == pytest.approx(0.0, abs=1e-4)


def test_export_is_the_familys_class_and_its_template_is_ours(path):
    from transformers import AutoTokenizer

    from megactllm.data.chat.records import sft_conversation

    assert path["codes"] == [0, 0]
    hf_class, fmt, _ = FAMILIES[path["family"]]
    out = path["root"] / "export"
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["architectures"] == [hf_class]
    hf = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    ours = path["tokenizer"]
    records = json.loads((path["root"] / "sft.json").read_text(encoding="utf-8"))
    for messages in [sft_conversation(records[0]), sft_conversation(records[-1])]:
        messages = [{"role": "system", "content": "你是一个有帮助的助手。"}] + messages
        ids = hf.apply_chat_template(messages, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        assert ids == fmt.tokenize(ours, messages).tokens.tolist()
        prompt = hf.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True)
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        assert prompt == fmt.generation_prompt_tokens(ours, messages[:-1])


def test_the_exported_model_serves_a_chat_completion(path):
    from serve_fixtures import post, serving

    from megactllm.serve.hf_engine import TransformersEngine

    assert path["codes"] == [0, 0]
    engine = TransformersEngine(path["root"] / "export", threads=1, name=path["family"])
    with serving(engine) as base:
        status, reply = post(base, "/v1/chat/completions", {
            "model": path["family"], "messages": [{"role": "user", "content": "怎样才能保持健康？"}],
            "max_tokens": 4, "temperature": 0.0})
    assert status == 200, reply
    assert reply["object"] == "chat.completion" and reply["model"] == path["family"]
    (choice,) = reply["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = reply["usage"]
    assert 1 <= usage["completion_tokens"] <= 4
    assert usage["prompt_tokens"] == len(engine.chat_tokens([{"role": "user", "content": "怎样才能保持健康？"}]))


def test_exported_weights_are_the_imported_ones_after_four_small_steps(path):
    """The export holds the original model moved by SFT and DPO's few steps (lr <= 1e-3), not a
    re-initialised one; every tensor keeps its name, shape and the family's RoPE settings."""
    from convert_testing import read_hf_weights

    assert path["codes"] == [0, 0]
    root = path["root"]
    before, after = read_hf_weights(root / "hf"), read_hf_weights(root / "export")
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    # Rows past the original ids: padding in `before`, the extension's mean-initialised words in `after`.
    rows = slice(None, path["old_ids"]) if path["new_words"] else slice(None)
    moved = {name: float((after[name][rows].float() - t[rows].float()).abs().max()) for name, t in before.items()}
    assert max(moved.values()) < 0.02, moved
    assert sum(v > 0 for v in moved.values()) >= len(moved) // 2, moved  # trained, not copied through
    if BASE[path["family"]] == "qwen2":
        assert any(name.endswith("q_proj.bias") for name in after)
    if BASE[path["family"]] in ("qwen3", "qwen3_moe"):
        assert any(name.endswith("self_attn.q_norm.weight") for name in after)
    if BASE[path["family"]] == "qwen3_moe":
        assert any(name.endswith("mlp.experts.7.down_proj.weight") for name in after)
    original, exported = (json.loads((root / d / "config.json").read_text(encoding="utf-8")) for d in ("hf", "export"))
    assert exported["rope_parameters"] == original["rope_parameters"]


def test_both_evaluation_backends_score_the_import_as_its_hf_original(path, shared_data, monkeypatch):
    """lm-eval's CMMLU log-likelihoods and bits per byte: the HF backend on the model transformers
    saved, the parallel backend on its import, for every family. The extended import has rows its
    original lacks: there the pair is the DPO checkpoint and its HF export (tokenizer included)."""
    from megactllm.eval.evaluate import EvalOptions, evaluate

    assert path["codes"] == [0, 0]
    hf_model, checkpoint = path["root"] / "hf", path["checkpoint"]
    if path["new_words"]:
        hf_model, checkpoint = path["root"] / "export", path["root"] / "dpo"
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    docs = [r["output"] for r in json.loads((shared_data / "sft" / "alpaca_zh_demo.json").read_text(encoding="utf-8"))[:2]]
    corpus = path["root"] / "zh.jsonl"  # read back as bpb_zh
    corpus.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    answers, bpb = {}, {}
    for name, model in (("hf", hf_model), ("parallel", checkpoint)):
        opts = EvalOptions(model=str(model), tasks=["cmmlu", "bpb"], data_dir=str(shared_data / "eval"),
                           subjects=["agronomy"], corpus=[str(corpus)], shots=1, limit=3, log_samples=True, batch_size=4)
        results = evaluate(opts, stream=None)
        assert results["config"]["backend"] == name
        answers[name] = [ll for s in results["samples"]["cmmlu_agronomy"] for ll in s["response"]]
        bpb[name] = results["results"]["bpb_zh"]
    assert len(answers["hf"]) == len(answers["parallel"]) == 12
    worst = max(abs(a - b) for a, b in zip(answers["hf"], answers["parallel"]))
    print(f"{path['family']}: CMMLU max |loglik diff| {worst:.1e}; bpb nll hf {bpb['hf']['nll_nats']:.6f} "
          f"parallel {bpb['parallel']['nll_nats']:.6f} nats over {bpb['hf']['tokens']} tokens")
    assert worst < 1e-4
    assert bpb["hf"]["tokens"] == bpb["parallel"]["tokens"] > 0
    assert abs(bpb["hf"]["nll_nats"] - bpb["parallel"]["nll_nats"]) <= 1e-5 * abs(bpb["hf"]["nll_nats"])
