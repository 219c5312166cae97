"""SFT data: record formats, bad records, preprocessing with truncation, mixtures, packing."""
import json

import numpy as np
import pytest
from chat_fixtures import SEQ

from megactllm.config import load_config
from megactllm.data.chat.sft_dataset import SFTDataset, build_sft_datasets
from megactllm.data.chat.sft_indexed import ChatSampleReader
from megactllm.data.blend import parse_blend
from megactllm.data.chat.mixture import (
    mixture_counts,
    mixture_samples,
    split_samples,
)
from megactllm.data.chat.packing import pack_rows
from megactllm.data.chat.sft_preprocess import preprocess_sft
from megactllm.data.chat.records import RecordError, sft_conversation
from megactllm.tokenizer.chat_template import tokenize_conversation

# Fixtures shared across the SFT/DPO test modules (one instance per session, not per module).
pytest_plugins = ["chat_fixtures"]


def test_record_shapes_normalise_to_one_conversation():
    alpaca = {"instruction": "翻译", "input": "hello", "output": "你好", "system": "S"}
    sharegpt = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "翻译\nhello"},
                                  {"from": "gpt", "value": "你好"}]}
    messages = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "翻译\nhello"},
                             {"role": "assistant", "content": "你好"}]}
    assert sft_conversation(alpaca) == sft_conversation(sharegpt) == sft_conversation(messages)
    history = sft_conversation({"instruction": "b", "output": "B", "history": [["a", "A"]]})
    assert [t["role"] for t in history] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("record,reason", [
    ({"instruction": "x"}, "no 'conversations'"),
    ({"instruction": "x", "output": ""}, "empty assistant"),
    ({"conversations": [{"from": "human", "value": "x"}]}, "end with an assistant"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, "unknown role"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "alternate"),
    ([1, 2], "not an object"),
])
def test_bad_records_raise_with_a_reason(record, reason):
    with pytest.raises(RecordError, match=reason):
        sft_conversation(record)


def test_preprocess_counts_bad_records_with_their_location(chat_tokenizer, tmp_path):
    src = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"instruction": "你好", "output": "你好！"}, ensure_ascii=False), "{not json",
             json.dumps({"instruction": "hi"}), json.dumps({"instruction": "长" * 200, "output": "好"}, ensure_ascii=False)]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = preprocess_sft([str(src)], str(tmp_path / "out"), chat_tokenizer, seq_length=32)
    assert (report.records, report.written, report.bad.total) == (4, 1, 2)
    assert report.truncated == 1 and report.dropped_after_truncation == 1  # the answer was cut away
    locations = [loc for locs in report.bad.examples.values() for loc in locs]
    assert sorted(locations) == [f"{src}:2", f"{src}:3"]
    meta = ChatSampleReader(str(tmp_path / "out"), "sft").metadata
    assert meta["preprocess"]["bad_records"]["total"] == 2 and meta["chat_template"]


def test_preprocessed_samples_are_the_template_tokens_truncated(shared_data, chat_tokenizer, sft_prefixes):
    reader = ChatSampleReader(sft_prefixes["zh"], "sft")
    records = json.loads((shared_data / "sft" / "alpaca_zh_demo.json").read_text(encoding="utf-8"))[:40]
    meta = reader.metadata["preprocess"]
    assert len(reader) == meta["written"] == 40 - meta["dropped_after_truncation"]
    assert meta["truncated"] > 0  # 64-position rows cut many of these answers
    k = 0
    for record in records:
        full = tokenize_conversation(chat_tokenizer, sft_conversation(record))
        if not full.loss_mask[1 : SEQ + 1].any():
            continue  # dropped: truncation left no answer token
        sample = reader.sample(k)
        assert sample["tokens"].tolist() == full.tokens[: SEQ + 1].tolist()
        assert sample["loss_mask"].tolist() == full.loss_mask[: SEQ + 1].tolist()
        k += 1
    assert k == len(reader)


def test_ratio_mixture_uses_the_limiting_source_whole():
    assert mixture_counts([1000, 999], [4, 1]) == [1000, 250]
    assert mixture_counts([1000, 999], [1, 1]) == [999, 999]
    assert mixture_counts([1000, 999], [8, 1]) == [1000, 125]
    assert mixture_counts([100, 5], None) == [100, 5]
    samples = mixture_samples([40, 40], [4, 1], seed=3)
    assert np.bincount(samples[:, 0]).tolist() == [40, 10]
    assert len({tuple(s) for s in samples}) == 50  # no sample repeats
    assert parse_blend(["4", "zh", "1", "en"]).weights == (4.0, 1.0)
    train, valid, test = split_samples(samples, "8,2,0")
    assert (len(train), len(valid), len(test)) == (40, 10, 0)


def test_packing_fills_rows_without_splitting_samples():
    rng = np.random.default_rng(0)
    positions = rng.integers(1, 65, size=200)
    rows = pack_rows(positions, 64)
    assert sorted(i for r in rows for i in r) == list(range(200))
    assert all(sum(positions[i] for i in r) <= 64 for r in rows)
    assert len(rows) < 0.8 * 200


def test_sft_datasets_from_a_recipe_line(chat_tokenizer, sft_prefixes):
    cfg = load_config(None, [
        f"model.seq_length={SEQ}",
        f"data.train_data_path=['4', '{sft_prefixes['zh']}', '1', '{sft_prefixes['en']}']",
    ])
    train, valid, test = build_sft_datasets(cfg, chat_tokenizer)
    assert valid is None and test is None
    zh, en = (len(ChatSampleReader(sft_prefixes[k], "sft")) for k in ("zh", "en"))
    assert np.bincount(train.samples[:, 0]).tolist() == mixture_counts([zh, en], [4, 1])
    row = train[0]
    assert {k: v.shape for k, v in row.items()} == {k: (SEQ,) for k in ("tokens", "labels", "loss_mask", "position_ids", "segment_ids")}
    unpacked = SFTDataset(train.sources, train.samples[:8], SEQ, False, 0)
    assert len(unpacked) == 8 and int(unpacked[3]["segment_ids"].max()) == 1
    packed = SFTDataset(train.sources, train.samples[:8], 4 * SEQ, True, 0)  # rows of 4 samples' room
    assert len(packed) <= 3 and int(packed[0]["segment_ids"].max()) >= 3


def test_epochs_reshuffle_and_fill_whole_global_batches():
    from megactllm.data.chat.sft_dataset import EpochDataset

    base = list(range(10))
    two = EpochDataset(base, 2, global_batch_size=4, seed=1)
    assert len(two) == 20 and two.samples_per_epoch == 10
    assert [two[i] for i in range(10)] == base
    second = [two[i] for i in range(10, 20)]
    assert sorted(second) == base and second != base
    assert len(EpochDataset(base, 2, global_batch_size=8, seed=1)) == 24  # ceil(20 / 8) steps of 8
    assert len(EpochDataset(base, 0.5, global_batch_size=4, seed=1)) == 8
