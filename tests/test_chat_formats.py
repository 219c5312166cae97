"""Each model family's own chat format: Llama-3's and ChatML (ours, Qwen's), against the tokenizer's
own Jinja template through transformers' apply_chat_template, in SFT/DPO data and in serving."""
import json
import shutil

import numpy as np
import pytest

from megactllm.tokenizer import load_tokenizer
from megactllm.tokenizer.chat_formats import (
    CHATML,
    EOT,
    LLAMA3,
    ChatTokenizationError,
    chat_format_of,
)

pytest.importorskip("transformers")
pytest.importorskip("jinja2")

# The SentencePiece chat tokenizer (our ChatML tokens), shared with the SFT/DPO test modules.
pytest_plugins = ["chat_fixtures"]

# Written here in the style of Llama-3-Instruct's tokenizer_config.json: BOS before the first turn,
# every content trimmed, each turn closed by <|eot_id|>.
LLAMA3_STYLE_TEMPLATE = (
    "{% for message in messages %}"
    "{% set turn = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.first %}{% set turn = bos_token + turn %}{% endif %}"
    "{{ turn }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# In the style of Qwen2's: ChatML, with a default system turn where the conversation has none.
QWEN_STYLE_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

HANDMADE = [
    [{"role": "system", "content": "You are a helpful assistant.\n"},
     {"role": "user", "content": "  Give three tips for staying healthy. "},
     {"role": "assistant", "content": " 1. Eat well.\n2. Exercise.\n\n3. Sleep  enough.\n"},
     {"role": "user", "content": "再说一次，用中文。"},
     {"role": "assistant", "content": "1. 均衡饮食。2. 经常锻炼。3. 睡眠充足。"}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "<tag> & 100% 12345"}],
]


def real_conversations(shared_data, n: int = 8) -> list[list[dict]]:
    from megactllm.data.chat.records import dpo_pair, sft_conversation

    out = list(HANDMADE)
    for lang in ("zh", "en"):
        records = json.loads((shared_data / "sft" / f"alpaca_{lang}_demo.json").read_text(encoding="utf-8"))[:n]
        out += [sft_conversation(r) for r in records]
        pairs = json.loads((shared_data / "dpo" / f"dpo_{lang}_demo.json").read_text(encoding="utf-8"))[:n // 2]
        out += [prompt + [{"role": "assistant", "content": chosen}] for prompt, chosen, _ in map(dpo_pair, pairs)]
    return out


@pytest.fixture(scope="module")
def llama3_dir(shared_data, tmp_path_factory):
    from bpe_fixtures import build_llama3_style_bpe

    return build_llama3_style_bpe(shared_data, tmp_path_factory.mktemp("llama3") / "tok", chat_template=LLAMA3_STYLE_TEMPLATE)


@pytest.fixture(scope="module")
def qwen_dir(qwen_style_bpe_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("qwen") / "tok"
    shutil.copytree(qwen_style_bpe_dir, out)
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": QWEN_STYLE_TEMPLATE}), encoding="utf-8")
    return out


def hf_ids(hf, messages, generation):
    out = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def masked_runs(tokenizer, tokens, mask) -> list[str]:
    runs, mask = [], list(mask) + [0]
    i = 0
    while i < len(tokens):
        if mask[i]:
            j = mask.index(0, i)
            runs.append(tokenizer.decode([int(t) for t in tokens[i:j]]))
            i = j
        else:
            i += 1
    return runs


def test_llama3_format_equals_the_tokenizers_own_template(shared_data, llama3_dir):
    from transformers import AutoTokenizer

    ours = load_tokenizer("huggingface", str(llama3_dir))
    hf = AutoTokenizer.from_pretrained(str(llama3_dir), local_files_only=True)
    assert chat_format_of(ours) is LLAMA3
    bos, eot = ours.token_to_id("<|begin_of_text|>"), ours.token_to_id(EOT)
    header = ours.encode("<|start_header_id|>assistant<|end_header_id|>\n\n")
    for messages in real_conversations(shared_data):
        sample = LLAMA3.tokenize(ours, messages)
        tokens = sample.tokens.tolist()
        assert tokens == hf_ids(hf, messages, False)
        assert tokens[0] == bos and tokens.count(bos) == 1  # the template's BOS, not a second from the post-processor
        assert LLAMA3.generation_prompt_tokens(ours, messages[:-1]) == hf_ids(hf, messages[:-1], True)
        # The mask from the ids alone: after each assistant header up to and including the next <|eot_id|>.
        expected = np.zeros(len(tokens), np.uint8)
        for i in range(len(tokens)):
            if tokens[i:i + len(header)] == header:
                j = i + len(header)
                expected[j: tokens.index(eot, j) + 1] = 1
        assert np.array_equal(sample.loss_mask, expected)
        assistant = [m["content"].strip() + EOT for m in messages if m["role"] == "assistant"]
        assert masked_runs(ours, tokens, sample.loss_mask) == assistant
        for gen in (False, True):  # our Jinja face renders as the Python one
            assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen) == LLAMA3.render(messages, gen)


def test_llama3_jinja_face_renders_as_python():
    import jinja2

    template = jinja2.Environment().from_string(LLAMA3.jinja)
    for messages in HANDMADE:
        for gen in (False, True):
            assert template.render(messages=messages, add_generation_prompt=gen) == LLAMA3.render(messages, gen)


def test_chatml_equals_a_qwen_style_template(shared_data, qwen_dir):
    """Qwen's template adds a default system turn where there is none; ChatML renders the turns it
    is given, so the conversations here carry their system turn."""
    from transformers import AutoTokenizer

    ours = load_tokenizer("huggingface", str(qwen_dir))
    hf = AutoTokenizer.from_pretrained(str(qwen_dir), local_files_only=True)
    assert chat_format_of(ours) is CHATML
    for messages in real_conversations(shared_data):
        if messages[0]["role"] != "system":
            messages = [{"role": "system", "content": "You are a helpful assistant."}] + messages
        sample = CHATML.tokenize(ours, messages)
        assert sample.tokens.tolist() == hf_ids(hf, messages, False)
        assert CHATML.generation_prompt_tokens(ours, messages[:-1]) == hf_ids(hf, messages[:-1], True)
        assistant = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert masked_runs(ours, sample.tokens, sample.loss_mask) == assistant


def test_format_is_picked_from_the_tokenizer(llama3_dir, chat_tokenizer, tmp_path):
    from tokenizers import Tokenizer

    assert chat_format_of(chat_tokenizer) is CHATML  # our SentencePiece chat tokenizers: unchanged
    both = tmp_path / "both"
    shutil.copytree(llama3_dir, both)
    tok = Tokenizer.from_file(str(both / "tokenizer.json"))
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.save(str(both / "tokenizer.json"))
    config = json.loads((both / "tokenizer_config.json").read_text(encoding="utf-8"))
    # A vocabulary with both sets: its chat template decides; without one, Llama-3's tokens do.
    (both / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHATML.jinja}), encoding="utf-8")
    assert chat_format_of(load_tokenizer("huggingface", str(both))) is CHATML
    (both / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": None}), encoding="utf-8")
    assert chat_format_of(load_tokenizer("huggingface", str(both))) is LLAMA3


def test_tokenizer_with_neither_format_is_refused(sp_model_path):
    with pytest.raises(ChatTokenizationError, match=r"no single token '<\|im_start\|>'.*Llama-3"):
        chat_format_of(load_tokenizer("sentencepiece", str(sp_model_path)))
    assert chat_format_of(load_tokenizer("sentencepiece", str(sp_model_path)), required=False) is None


def test_sft_and_dpo_preprocessing_use_llama3(shared_data, llama3_dir, tmp_path):
    from transformers import AutoTokenizer

    from megactllm.data.chat.dpo_preprocess import preprocess_dpo
    from megactllm.data.chat.records import sft_conversation
    from megactllm.data.chat.sft_indexed import ChatSampleReader
    from megactllm.data.chat.sft_preprocess import preprocess_sft

    ours = load_tokenizer("huggingface", str(llama3_dir))
    hf = AutoTokenizer.from_pretrained(str(llama3_dir), local_files_only=True)
    eot, bos = ours.token_to_id(EOT), ours.token_to_id("<|begin_of_text|>")
    records = json.loads((shared_data / "sft" / "alpaca_zh_demo.json").read_text(encoding="utf-8"))[:12]
    src = tmp_path / "sft.json"
    src.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    report = preprocess_sft([str(src)], str(tmp_path / "sft"), ours, seq_length=4096)
    assert report.written == len(records) and report.truncated == 0
    reader = ChatSampleReader(str(tmp_path / "sft"), "sft")
    assert reader.metadata["chat_template"] == LLAMA3.name
    for i, record in enumerate(records):
        sample = reader.sample(i)
        messages = sft_conversation(record)
        assert sample["tokens"].tolist() == hf_ids(hf, messages, False)
        runs = masked_runs(ours, sample["tokens"], sample["loss_mask"])
        assert runs == [m["content"].strip() + EOT for m in messages if m["role"] == "assistant"]

    pairs = json.loads((shared_data / "dpo" / "dpo_en_demo.json").read_text(encoding="utf-8"))[:6]
    src = tmp_path / "dpo.json"
    src.write_text(json.dumps(pairs, ensure_ascii=False), encoding="utf-8")
    assert preprocess_dpo([str(src)], str(tmp_path / "dpo"), ours, seq_length=8192).written == len(pairs)
    reader = ChatSampleReader(str(tmp_path / "dpo"), "dpo")
    assert reader.metadata["chat_template"] == LLAMA3.name
    for i in range(len(pairs)):
        s = reader.sample(i)
        for half in ("chosen", "rejected"):
            tokens, mask = s[f"{half}_tokens"].tolist(), s[f"{half}_mask"]
            start = int(np.argmax(mask))
            assert tokens[0] == bos and tokens[-1] == eot and mask[-1] == 1 and mask[start:].all()
            assert tokens[:start][-len(ours.encode("<|end_header_id|>\n\n")):] == ours.encode("<|end_header_id|>\n\n")


@pytest.fixture(scope="module")
def eot_model_dir(llama3_dir, tmp_path_factory):
    """A tiny Llama with the Llama-3 tokenizer whose greedy next token is always <|eot_id|> (not its
    eos, <|end_of_text|>): an engine that stops at the end of the turn answers with one token."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    ours = load_tokenizer("huggingface", str(llama3_dir))
    config = LlamaConfig(vocab_size=ours.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=ours.bos_id, eos_token_id=ours.eod_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # the residual stream is the token's embedding, the same for every token
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[ours.token_to_id(EOT)] = 1.0
    model_dir = tmp_path_factory.mktemp("eot") / "model"
    model.save_pretrained(str(model_dir))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama3_dir / name, model_dir / name)
    return model_dir


def test_hf_serve_engine_stops_at_eot(llama3_dir, eot_model_dir):
    """The engine's chat prompts are the training prompts, and its answer ends at <|eot_id|>."""
    from megactllm.serve.engine import SamplingParams
    from megactllm.serve.hf_engine import TransformersEngine

    ours = load_tokenizer("huggingface", str(llama3_dir))
    engine = TransformersEngine(eot_model_dir)
    messages = HANDMADE[0][:2]
    prompt = engine.chat_tokens(messages)
    assert prompt == LLAMA3.generation_prompt_tokens(ours, messages)
    assert ours.token_to_id(EOT) in engine.stop_ids and ours.eod_id in engine.stop_ids
    done = engine.complete(prompt, SamplingParams(max_tokens=8, temperature=0.0))
    assert (done.completion_tokens, done.finish_reason, done.text) == (1, "stop", "")


def test_hf_eval_backend_uses_llama3_prompt_and_stop(llama3_dir, eot_model_dir):
    from megactllm.eval.backends.hf import HFBackend

    ours = load_tokenizer("huggingface", str(llama3_dir))
    backend = HFBackend(eot_model_dir)
    messages = HANDMADE[1][:1]
    assert backend.chat_prompt(messages) == LLAMA3.generation_prompt_tokens(ours, messages)
    assert EOT in backend.chat_stop_strings() and ours.token_to_id(EOT) in backend._stop_ids()
    assert backend.greedy_generate([backend.chat_prompt(messages)], max_new_tokens=6) == [""]


def test_hf_export_writes_the_tokenizers_own_format(shared_data, llama3_dir, tmp_path):
    """The exported tokenizer_config.json renders chats as SFT trained on them (Llama-3 here)."""
    from transformers import AutoTokenizer

    from megactllm.convert.export import default_chat_template
    from megactllm.convert.tokenizer_export import export_tokenizer

    template, why = default_chat_template(load_tokenizer("huggingface", str(llama3_dir / "tokenizer.json")))
    assert template == LLAMA3.jinja and LLAMA3.name in why
    export_tokenizer("huggingface", llama3_dir / "tokenizer.json", tmp_path / "hf", chat_template=template)
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    ours = load_tokenizer("huggingface", str(llama3_dir))
    for messages in real_conversations(shared_data, n=2):
        assert hf_ids(hf, messages, False) == LLAMA3.tokenize(ours, messages).tokens.tolist()
        assert hf_ids(hf, messages[:-1], True) == LLAMA3.generation_prompt_tokens(ours, messages[:-1])
