"""Input formats (jsonl, .gz, .zst, txt, parquet) read record by record, giant lines skipped."""
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from megactllm.clean.config import InputConfig
from megactllm.clean.records import BadRecord, Record, read_shard

ROWS = [{"id": "a", "text": "第一篇文章。", "url": "https://x.example/1"}, {"id": "b", "text": "第二篇。"}]


def _jsonl(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


@pytest.mark.parametrize("name,writer", [
    ("s.jsonl", lambda p, b: p.write_bytes(b)),
    ("s.jsonl.gz", lambda p, b: p.write_bytes(gzip.compress(b))),
    ("s.jsonl.zst", lambda p, b: p.write_bytes(zstandard.ZstdCompressor().compress(b))),
])
def test_jsonl_variants(tmp_path, name, writer):
    path = tmp_path / name
    writer(path, _jsonl(ROWS))
    recs = list(read_shard(path, InputConfig()))
    assert [(r.key, r.text, r.url) for r in recs] == [("a", "第一篇文章。", "https://x.example/1"), ("b", "第二篇。", None)]
    assert recs[1].where == f"{path}:2"


def test_parquet_and_txt(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS + [{"id": "c", "text": None}]), tmp_path / "s.parquet")
    recs = list(read_shard(tmp_path / "s.parquet", InputConfig()))
    assert [r.text for r in recs[:2]] == ["第一篇文章。", "第二篇。"]
    assert isinstance(recs[2], BadRecord) and recs[2].reason == "missing_text" and recs[2].where.endswith("row 3")
    (tmp_path / "s.txt").write_text("一行一篇。\n第二篇。\n", encoding="utf-8")
    recs = list(read_shard(tmp_path / "s.txt", InputConfig()))
    assert [(r.key, r.text) for r in recs] == [("s.txt:1", "一行一篇。"), ("s.txt:2", "第二篇。")]


def test_giant_line_is_skipped_not_loaded(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_bytes(_jsonl(ROWS[:1]) + b'{"text": "' + b"x" * 5_000_000 + b'"}\n' + _jsonl(ROWS[1:]))
    recs = list(read_shard(path, InputConfig(max_record_bytes=1000)))
    assert isinstance(recs[0], Record) and isinstance(recs[2], Record) and recs[2].key == "b"
    assert recs[1].reason == "giant_record" and recs[1].nbytes > 5_000_000 and recs[1].where.endswith(":2")


def test_unknown_extension_is_a_clear_error(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"data.bin.*input.format"):
        list(read_shard(tmp_path / "data.bin", InputConfig()))
