"""Parallel corpora as documents: template, both directions, several pairs per document, counts,
malformed lines named file:line, strict mode, and the real News Commentary pairs tokenized."""
import json
import sys
from pathlib import Path

import pytest

from megactllm.data.pretrain.parallel_corpus import ParallelCorpusSettings, ParallelCorpusError, write_parallel_documents

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import preprocess_parallel  # noqa: E402


def _docs(path):
    return [json.loads(line)["text"] for line in open(path, encoding="utf-8")]


@pytest.fixture
def inputs(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_bytes(
        "Hello.\t你好。\n"
        "only one field\n"                       # line 2: wrong_fields
        "Thanks.\t谢谢。\n"
        "\n"                                     # blank: ignored, not counted
        "Empty zh.\t  \n".encode()               # line 5: empty_side
        + b"bad \xff bytes\t\xe4\xbd\xa0\n"      # line 6: invalid_utf8
        + "Bye.\t再见。\n".encode()
    )
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(
        json.dumps({"en": "Good.", "zh": "好。"}, ensure_ascii=False) + "\n"
        + "{not json\n"                          # line 2: malformed_json
        + json.dumps({"en": "No zh."}) + "\n"    # line 3: missing_key
        + json.dumps({"zh": "数字", "en": 7}) + "\n",  # line 4: missing_key (not a string)
        encoding="utf-8",
    )
    return tsv, jsonl


def test_pairs_become_documents_in_both_directions_with_counts_and_named_bad_lines(tmp_path, inputs):
    tsv, jsonl = inputs
    out = tmp_path / "docs.jsonl"
    summary = write_parallel_documents(ParallelCorpusSettings(inputs=[str(tsv), str(jsonl)], output=str(out)))
    docs = _docs(out)
    assert docs[:2] == ["English: Hello.\n中文: 你好。", "中文: 你好。\nEnglish: Hello."]
    assert docs[-2:] == ["English: Good.\n中文: 好。", "中文: 好。\nEnglish: Good."]
    assert summary.lines == 10 and summary.pairs == 4 and len(docs) == 8
    assert dict(summary.documents) == {"en-zh": 4, "zh-en": 4}
    assert summary.characters == sum(len(d) for d in docs)
    assert dict(summary.skipped) == {"wrong_fields": 1, "empty_side": 1, "invalid_utf8": 1, "malformed_json": 1, "missing_key": 2}
    assert summary.first_skips[:3] == [f"{tsv}:2 wrong_fields (1 fields)", f"{tsv}:5 empty_side (zh is empty)",
                                       summary.first_skips[2]]
    assert summary.first_skips[2].startswith(f"{tsv}:6 invalid_utf8")
    assert f"{jsonl}:2 malformed_json" in summary.first_skips[3]
    text = summary.format()
    assert "pairs: 4" in text and "documents: 8 (en-zh: 4, zh-en: 4)" in text and "missing_key" in text


def test_several_pairs_per_document_one_direction_and_a_custom_template(tmp_path, inputs):
    tsv, _ = inputs
    out = tmp_path / "docs.jsonl"
    config = ParallelCorpusSettings(inputs=[str(tsv)], output=str(out), directions=["zh-en"], pairs_per_document=2,
                            template="<{src_lang}>{src}</{src_lang}> <{tgt_lang}>{tgt}</{tgt_lang}>",
                            language_names={"en": "en", "zh": "zh"})
    summary = write_parallel_documents(config)
    assert _docs(out) == [
        "<zh>你好。</zh> <en>Hello.</en>\n\n<zh>谢谢。</zh> <en>Thanks.</en>",
        "<zh>再见。</zh> <en>Bye.</en>",  # the last document holds what is left
    ]
    assert dict(summary.documents) == {"zh-en": 2}


@pytest.mark.parametrize("change, message", [
    ({"strict": True}, r"pairs.tsv:2 wrong_fields \(1 fields\)"),
    ({"directions": ["en-fr"]}, "directions"),
    ({"template": "{src} only"}, "must contain both"),
    ({"template": "{src} {tgt} {other}"}, "not usable"),
    ({"pairs_per_document": 0}, ">= 1"),
    ({"inputs": ["/nonexistent/pairs.tsv"]}, "does not exist"),
])
def test_bad_input_or_options_are_named_errors_and_leave_no_output(tmp_path, inputs, change, message):
    tsv, _ = inputs
    out = tmp_path / "docs.jsonl"
    config = ParallelCorpusSettings(inputs=[str(tsv)], output=str(out))
    for k, v in change.items():
        setattr(config, k, v)
    with pytest.raises(ParallelCorpusError, match=message):
        write_parallel_documents(config)
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_news_commentary_pairs_tokenized_through_the_preprocess_pipeline(tmp_path, shared_data, sp_model_path, capsys):
    from megactllm.data.pretrain.indexed import IndexedDatasetReader, read_metadata

    tsv = shared_data / "corpus" / "news_commentary_en_zh.tsv"
    n_lines = sum(1 for line in open(tsv, encoding="utf-8") if line.strip())
    rc = preprocess_parallel.main([
        "--input", str(tsv), "--output", str(tmp_path / "parallel.jsonl"), "--pairs-per-document", "4",
        "--tokenizer-type", "sentencepiece", "--tokenizer-model", str(sp_model_path),
        "--output-prefix", str(tmp_path / "parallel"), "--append-eod",
    ])
    out = capsys.readouterr().out
    assert rc == 0, out
    documents = 2 * -(-n_lines // 4)
    assert f"pairs: {n_lines:,}" in out and f"documents: {documents:,}" in out
    reader = IndexedDatasetReader(str(tmp_path / "parallel_text_document"))
    meta = read_metadata(str(tmp_path / "parallel_text_document"))
    assert reader.num_documents == documents and meta["documents"] == documents and meta["eod_id"] == 2
    first = _docs(tmp_path / "parallel.jsonl")[0]
    assert first.startswith("English: 1929 or 1989?\n中文: 1929年还是1989年?\n\nEnglish: ")
    # A bad option is an error with a message, not a traceback.
    assert preprocess_parallel.main(["--input", str(tsv), "--output", str(tmp_path / "x.jsonl"), "--output-prefix", "p"]) == 2
