"""DPO data: record shapes, shared prompt tokens, response-only masks, stated truncation, pair items."""
import json

import numpy as np
import pytest
from chat_fixtures import SEQ

from megactllm.data.chat.dpo_preprocess import TokenizedPair, tokenize_pair, truncate_pair
from megactllm.data.chat.sft_indexed import ChatSampleReader
from megactllm.data.chat.records import RecordError, dpo_pair
from megactllm.tokenizer.chat_template import IM_END

pytest_plugins = ["chat_fixtures"]


def test_pair_shapes():
    sharegpt = {"conversations": [{"from": "human", "value": "问题"}], "chosen": {"from": "gpt", "value": "好"},
                "rejected": {"from": "gpt", "value": "坏"}}
    flat = {"prompt": "问题", "chosen": "好", "rejected": "坏"}
    assert dpo_pair(sharegpt) == dpo_pair(flat) == ([{"role": "user", "content": "问题"}], "好", "坏")
    with pytest.raises(RecordError, match="identical"):
        dpo_pair({"prompt": "q", "chosen": "a", "rejected": "a"})
    with pytest.raises(RecordError, match="end with a user turn"):
        dpo_pair({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                  "chosen": "b", "rejected": "c"})


def test_halves_share_the_prompt_and_mask_only_the_response(shared_data, chat_tokenizer):
    records = json.loads((shared_data / "dpo" / "dpo_zh_demo.json").read_text(encoding="utf-8"))[:20]
    end = chat_tokenizer.token_to_id(IM_END)
    for record in records:
        prompt, chosen, rejected = dpo_pair(record)
        pair = tokenize_pair(chat_tokenizer, prompt, chosen, rejected)
        c_tokens, c_mask, r_tokens, r_mask = pair.halves()
        n = len(pair.prompt)
        assert np.array_equal(c_tokens[:n], r_tokens[:n]) and not c_mask[:n].any() and not r_mask[:n].any()
        for tokens, mask, text in ((c_tokens, c_mask, chosen), (r_tokens, r_mask, rejected)):
            trained = tokens[mask.astype(bool)]
            assert trained[-1] == end and chat_tokenizer.decode(trained[:-1].tolist()).strip() == text.strip()


def _pair(prompt: int, chosen: int, rejected: int) -> TokenizedPair:
    return TokenizedPair(np.arange(prompt), np.full(chosen, 7), np.ones(chosen, np.uint8),
                         np.full(rejected, 8), np.ones(rejected, np.uint8))


@pytest.mark.parametrize("sizes,expected", [
    ((10, 20, 5), (10, 20, 5, False, False)),      # fits
    ((30, 20, 5), (30, 20, 5, False, False)),      # exactly 50
    ((40, 20, 5), (30, 20, 5, True, False)),       # prompt cut from the left, responses whole
    ((10, 60, 5), (10, 40, 5, False, True)),       # a long response cut from the right
    ((45, 60, 30), (25, 25, 25, True, True)),      # both: prompt down to half the budget, then responses
])
def test_truncation_policy(sizes, expected):
    fitted, prompt_cut, response_cut = truncate_pair(_pair(*sizes), 50)
    assert (len(fitted.prompt), len(fitted.chosen), len(fitted.rejected), prompt_cut, response_cut) == expected
    assert fitted.prompt[-1] == sizes[0] - 1  # the prompt keeps its end, next to the response
    assert max(len(h) for h in fitted.halves()[::2]) <= 50


def test_preprocessed_pairs_keep_both_halves_in_one_sample(dpo_prefix):
    reader = ChatSampleReader(dpo_prefix, "dpo")
    assert len(reader) == 32 and reader.metadata["preprocess"]["bad_records"]["total"] == 0
    for i in range(len(reader)):
        s = reader.sample(i)
        assert max(len(s["chosen_tokens"]), len(s["rejected_tokens"])) <= SEQ + 1
        assert s["chosen_mask"][1:].any() and s["rejected_mask"][1:].any()
    with pytest.raises(Exception, match="expected 'sft'"):
        ChatSampleReader(dpo_prefix, "sft")


def test_dpo_items_put_chosen_and_rejected_rows_together(dpo_batch):
    item = dpo_batch[0]
    assert {k: v.shape for k, v in item.items()} == {k: (2, SEQ) for k in ("tokens", "labels", "loss_mask", "position_ids", "segment_ids")}
    assert item["loss_mask"][0].sum() > 0 and item["loss_mask"][1].sum() > 0
    assert not np.array_equal(item["labels"][0], item["labels"][1])


def test_multi_turn_prompt_trains_only_the_response(shared_data, chat_tokenizer):
    """The assistant turns inside a multi-turn prompt are context: neither half trains them."""
    records = json.loads((shared_data / "dpo" / "dpo_en_demo.json").read_text(encoding="utf-8"))[:20]
    multi = [dpo_pair(r) for r in records if len(dpo_pair(r)[0]) > 1]
    assert multi, "the English demo set has multi-turn prompts"
    for prompt, chosen, rejected in multi:
        pair = tokenize_pair(chat_tokenizer, prompt, chosen, rejected)
        for response, mask, text in ((pair.chosen, pair.chosen_mask, chosen), (pair.rejected, pair.rejected_mask, rejected)):
            trained = response[mask.astype(bool)]
            assert chat_tokenizer.decode(trained.tolist()).strip() == text.strip() + IM_END
