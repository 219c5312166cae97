"""The chat template: one format in Jinja and Python, real special tokens, assistant-only loss mask."""
import numpy as np
import pytest

from megactllm.tokenizer import load_tokenizer
from megactllm.tokenizer.chat_template import (
    CHAT_TEMPLATE,
    IM_END,
    IM_START,
    ChatFormatError,
    ChatTokenizationError,
    check_chat_tokens,
    generation_prompt_tokens,
    render,
    tokenize_conversation,
)

# Fixtures shared across the SFT/DPO test modules (one instance per session, not per module).
pytest_plugins = ["chat_fixtures"]

CONVERSATIONS = [
    [{"role": "user", "content": "识别并解释给定列表中的两个科学理论：细胞理论和日心说。"},
     {"role": "assistant", "content": "细胞理论认为所有生命体都是由细胞构成的。"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Give three tips for staying healthy."},
     {"role": "assistant", "content": " 1. Eat well.\n2. Exercise.\n\n3. Sleep  enough."},
     {"role": "user", "content": "再说一次，用中文。"},
     {"role": "assistant", "content": "1. 均衡饮食。2. 经常锻炼。3. 睡眠充足。"}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "<tag> & 100%"}],
]


def _assistant_runs_from_ids(tokenizer, tokens):
    """Reference mask from the ids alone: after each `<|im_start|> assistant \\n` header up to and
    including the next <|im_end|>."""
    start, end = tokenizer.token_to_id(IM_START), tokenizer.token_to_id(IM_END)
    header = [start] + tokenizer.encode(f"{IM_START}assistant\n")[2:]  # drop the dummy-prefix piece
    mask = np.zeros(len(tokens), np.uint8)
    for i in range(len(tokens)):
        if list(tokens[i : i + len(header)]) == header:
            j = i + len(header)
            k = list(tokens[j:]).index(end) + j
            mask[j : k + 1] = 1
    return mask


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["zh", "multi-turn", "symbols"])
def test_python_render_equals_jinja_template(messages):
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(CHAT_TEMPLATE)
    for gen in (False, True):
        assert template.render(messages=messages, add_generation_prompt=gen) == render(messages, add_generation_prompt=gen)


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["zh", "multi-turn", "symbols"])
def test_loss_mask_covers_exactly_the_assistant_tokens(chat_tokenizer, messages):
    sample = tokenize_conversation(chat_tokenizer, messages)
    # The rendered text's ids, less SentencePiece's dummy-prefix piece before the first <|im_start|>.
    raw = chat_tokenizer.encode(render(messages))
    assert chat_tokenizer.id_to_token(raw[0]) == "▁" and sample.tokens.tolist() == raw[1:]
    assert np.array_equal(sample.loss_mask, _assistant_runs_from_ids(chat_tokenizer, sample.tokens))
    # Decoded, the trained runs are the assistant contents each closed by <|im_end|>.
    runs, mask = [], sample.loss_mask.tolist() + [0]
    i = 0
    while i < len(sample.tokens):
        if mask[i]:
            j = mask.index(0, i)
            runs.append(chat_tokenizer.decode(sample.tokens[i:j].tolist()))
            i = j
        else:
            i += 1
    expected = [m["content"] + IM_END for m in messages if m["role"] == "assistant"]
    assert [r.lstrip() for r in runs] == [e.lstrip() for e in expected]


def test_special_tokens_are_single_tokens(chat_tokenizer):
    ids = check_chat_tokens(chat_tokenizer)
    assert ids[IM_START] != ids[IM_END]
    prompt = generation_prompt_tokens(chat_tokenizer, CONVERSATIONS[0][:1])
    assert prompt.count(ids[IM_START]) == 2 and prompt.count(ids[IM_END]) == 1


def test_tokenizer_without_chat_tokens_is_refused(sp_model_path):
    with pytest.raises(ChatTokenizationError, match="extend its vocabulary"):
        check_chat_tokens(load_tokenizer("sentencepiece", str(sp_model_path)))


def test_bad_conversations_are_refused():
    with pytest.raises(ChatFormatError, match="role"):
        render([{"role": "narrator", "content": "x"}])
    with pytest.raises(ChatFormatError, match="system"):
        render([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}])


def test_hf_apply_chat_template_gives_the_same_tokens(shared_data, chat_sp_model, chat_tokenizer, tmp_path):
    """The exported HF tokenizer with CHAT_TEMPLATE tokenizes conversations exactly as training does."""
    pytest.importorskip("transformers")
    pytest.importorskip("jinja2")
    import json

    from transformers import AutoTokenizer

    from megactllm.convert.tokenizer_export import export_tokenizer
    from megactllm.data.chat.records import dpo_pair, sft_conversation

    export_tokenizer("sentencepiece", chat_sp_model, tmp_path, chat_template=CHAT_TEMPLATE)
    hf = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    conversations = list(CONVERSATIONS)
    for lang in ("zh", "en"):
        records = json.loads((shared_data / "sft" / f"alpaca_{lang}_demo.json").read_text(encoding="utf-8"))[:25]
        conversations += [sft_conversation(r) for r in records]
        pairs = json.loads((shared_data / "dpo" / f"dpo_{lang}_demo.json").read_text(encoding="utf-8"))[:10]
        conversations += [prompt + [{"role": "assistant", "content": chosen}] for prompt, chosen, _ in map(dpo_pair, pairs)]

    def hf_ids(messages, generation):
        out = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    for messages in conversations:
        assert hf_ids(messages, False) == tokenize_conversation(chat_tokenizer, messages).tokens.tolist()
        prompt = messages[:-1]
        assert hf_ids(prompt, True) == generation_prompt_tokens(chat_tokenizer, prompt)
