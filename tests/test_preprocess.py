"""preprocess_data: every input format, every bad record, workers, per-shard output, the CLI."""
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megactllm.data.pretrain.indexed import IndexedDatasetReader
from megactllm.data.pretrain.preprocess import (
    PreprocessConfig,
    PreprocessError,
    output_prefix_for,
    preprocess,
)
from megactllm.common.corpus import InputError
from megactllm.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def docs(shared_data):
    lines = (shared_data / "corpus" / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines()
    return [l for l in lines if l.strip()][:300]


@pytest.fixture(scope="module")
def tok(sp_model_path):
    return load_tokenizer("sentencepiece", str(sp_model_path))


def run(tmp_path, inputs, sp_model_path, name="out", **kw):
    config = PreprocessConfig(
        input=[str(p) for p in inputs], output_prefix=str(tmp_path / name), tokenizer_type="sentencepiece",
        tokenizer_model=str(sp_model_path), **kw,
    )
    return preprocess(config)


def expected_tokens(tok, texts, eod=True):
    return [tok.encode(t) + ([tok.eod_id] if eod else []) for t in texts]


def read_all(prefix):
    r = IndexedDatasetReader(prefix)
    return [r[i].tolist() for i in range(len(r))]


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t, "id": 1}, ensure_ascii=False) + "\n" for t in texts)


def test_jsonl_tokens_match_the_tokenizer(tmp_path, docs, tok, sp_model_path):
    write_jsonl(tmp_path / "a.jsonl", docs)
    summary = run(tmp_path, [tmp_path / "a.jsonl"], sp_model_path, append_eod=True)
    prefix = output_prefix_for(str(tmp_path / "out"), "text")
    assert summary.outputs == [prefix]
    assert summary.documents == len(docs) and sum(summary.skipped.values()) == 0
    assert read_all(prefix) == expected_tokens(tok, docs)
    ds = IndexedDataset(prefix)  # megatron-core reads it
    assert len(ds) == len(docs) and ds[0].dtype == np.uint16
    assert IndexedDatasetReader(prefix).metadata["vocab_size"] == 64000


BAD_LINES = [
    (b'{"text": "ok one"}', None),
    (b'{"text": "broken', "malformed_json"),
    (b'{"title": "no text key"}', "missing_key"),
    (b'{"text": null}', "missing_key"),
    (b'{"text": "\xff\xfe bad bytes"}', "invalid_utf8"),
    (b'{"text": ""}', "empty"),
    (b'{"text": "   \\n  "}', "empty"),
    (b'', "empty"),
    (b'{"text": 42}', "not_text"),
    (b'[1, 2]', "malformed_json"),
    (b'{"text": "ok two"}', None),
]


def write_bad(path):
    path.write_bytes(b"\n".join(line for line, _ in BAD_LINES) + b"\n")


def test_bad_records_are_counted_with_file_and_line(tmp_path, tok, sp_model_path):
    write_bad(tmp_path / "bad.jsonl")
    summary = run(tmp_path, [tmp_path / "bad.jsonl"], sp_model_path, max_reported_skips=3)
    want = {}
    for _, reason in BAD_LINES:
        if reason:
            want[reason] = want.get(reason, 0) + 1
    assert dict(summary.skipped) == want
    assert summary.documents == 2
    assert summary.first_skips[0].startswith(f"{tmp_path / 'bad.jsonl'}:2 malformed_json")
    assert summary.first_skips[1].startswith(f"{tmp_path / 'bad.jsonl'}:3 missing_key")
    assert len(summary.first_skips) == 3
    assert read_all(output_prefix_for(str(tmp_path / "out"), "text")) == expected_tokens(tok, ["ok one", "ok two"], eod=False)
    text = summary.format()
    assert "invalid_utf8" in text and "first skipped records" in text


@pytest.mark.parametrize("line_no", [2, 3, 5, 6, 8, 9])
def test_strict_stops_at_the_bad_record(tmp_path, sp_model_path, line_no):
    lines = [b'{"text": "fine"}'] * 10
    lines[line_no - 1] = BAD_LINES[line_no - 1][0]
    (tmp_path / "s.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(PreprocessError, match=f"s.jsonl:{line_no}: {BAD_LINES[line_no - 1][1]}"):
        run(tmp_path, [tmp_path / "s.jsonl"], sp_model_path, strict=True)
    assert not list(tmp_path.glob("out*")), "a failed run leaves no dataset"


def test_formats_and_compression_give_the_same_tokens(tmp_path, docs, tok, sp_model_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    texts = docs[:60]
    write_jsonl(tmp_path / "plain.jsonl", texts)
    raw = (tmp_path / "plain.jsonl").read_bytes()
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    (tmp_path / "lines.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    (tmp_path / "lines.txt.gz").write_bytes(gzip.compress(("\n".join(texts) + "\n").encode()))
    pq.write_table(pa.table({"text": texts}), tmp_path / "t.parquet", row_group_size=17)
    want = expected_tokens(tok, texts)
    for name in ("plain.jsonl", "c.jsonl.gz", "c.jsonl.zst", "lines.txt", "lines.txt.gz", "t.parquet"):
        out = "o_" + name.replace(".", "_")
        summary = run(tmp_path, [tmp_path / name], sp_model_path, name=out, append_eod=True)
        assert summary.documents == len(texts), name
        assert read_all(output_prefix_for(str(tmp_path / out), "text")) == want, name


def test_parquet_nulls_and_missing_column(tmp_path, sp_model_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a b", None, "", "c"]}), tmp_path / "n.parquet")
    summary = run(tmp_path, [tmp_path / "n.parquet"], sp_model_path)
    assert summary.documents == 2 and summary.skipped == {"missing_key": 1, "empty": 1}
    assert summary.first_skips[0].startswith(f"{tmp_path / 'n.parquet'}:2 missing_key")
    with pytest.raises(InputError, match="no column"):
        run(tmp_path, [tmp_path / "n.parquet"], sp_model_path, name="o2", json_keys=["body"])


def test_workers_and_chunks_match_one_worker(tmp_path, docs, sp_model_path, monkeypatch):
    import megactllm.data.pretrain.preprocess as pre

    # Bad lines sit in later chunks: their reported line numbers must still be absolute.
    lines = [json.dumps({"text": t}, ensure_ascii=False).encode() for t in docs]
    lines[250] = b"{not json"
    (tmp_path / "big.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    one = run(tmp_path, [tmp_path / "big.jsonl"], sp_model_path, name="one", append_eod=True, chunk_bytes=16 << 10)
    # Two workers as two encode threads in this process (SentencePiece's native batch threads) ...
    threads = run(tmp_path, [tmp_path / "big.jsonl"], sp_model_path, name="threads", append_eod=True, workers=2,
                  chunk_bytes=16 << 10)
    # ... as two worker processes (one thread each) ...
    monkeypatch.setattr(pre, "THREADS_PER_PROCESS", 1)
    two = run(tmp_path, [tmp_path / "big.jsonl"], sp_model_path, name="two", append_eod=True, workers=2,
              chunk_bytes=16 << 10)
    # ... and as processes of several threads each.
    monkeypatch.setattr(pre, "THREADS_PER_PROCESS", 2)
    mixed = run(tmp_path, [tmp_path / "big.jsonl"], sp_model_path, name="mixed", append_eod=True, workers=4,
                chunk_bytes=16 << 10)
    for name in ("two", "threads", "mixed"):
        for ext in (".bin", ".idx"):
            a = Path(output_prefix_for(str(tmp_path / "one"), "text") + ext).read_bytes()
            b = Path(output_prefix_for(str(tmp_path / name), "text") + ext).read_bytes()
            assert a == b, name
    for s in (one, two, threads, mixed):
        assert s.documents == len(docs) - 1
        assert s.first_skips == [f"{tmp_path / 'big.jsonl'}:251 malformed_json (Expecting property name enclosed in double quotes at column 2)"]
    assert not list(tmp_path.glob("*part*")), "worker parts are cleaned up"


def test_directory_per_shard_and_several_keys(tmp_path, docs, tok, sp_model_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    for name, part in (("a.jsonl", docs[:10]), ("sub/b.jsonl", docs[10:25])):
        with open(d / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t, "title": t[:5]}, ensure_ascii=False) + "\n" for t in part)
    (d / "notes.md").write_text("ignored: not a known format")
    summary = run(tmp_path, [d], sp_model_path, per_shard=True, json_keys=["text", "title"])
    out = str(tmp_path / "out")
    assert sorted(summary.outputs) == sorted(
        output_prefix_for(out, k, s) for k in ("text", "title") for s in ("a", "b")
    )
    assert read_all(output_prefix_for(out, "title", "b")) == [tok.encode(t[:5]) for t in docs[10:25]]
    merged = run(tmp_path, [str(d / "**" / "*.jsonl")], sp_model_path, name="m")
    assert merged.documents == 25


def test_missing_input_is_a_clear_error(tmp_path, sp_model_path):
    with pytest.raises(InputError, match="no such file"):
        run(tmp_path, [tmp_path / "nope*.jsonl"], sp_model_path)
    (tmp_path / "array.json").write_text('[\n {"text": "a"},\n {"text": "b"}\n]\n')
    with pytest.raises(InputError, match="one JSON array, not JSON lines"):
        run(tmp_path, [tmp_path / "array.json"], sp_model_path)
    (tmp_path / "notes.md").write_text("# not a corpus")
    with pytest.raises(InputError, match="cannot tell the format"):
        run(tmp_path, [tmp_path / "notes.md"], sp_model_path)


def test_cli_end_to_end(tmp_path, docs, sp_model_path):
    write_jsonl(tmp_path / "a.jsonl", docs[:50])
    write_bad(tmp_path / "b.jsonl")
    cmd = [sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(tmp_path / "a.jsonl"),
           str(tmp_path / "b.jsonl"), "--output-prefix", str(tmp_path / "cli"), "--tokenizer-type", "sentencepiece",
           "--tokenizer-model", str(sp_model_path), "--append-eod", "--workers", "2", "--log-interval", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "documents: 52" in out.stdout and "malformed_json" in out.stdout
    assert "docs/s" in out.stderr and "MB/s" in out.stderr and "ETA" in out.stderr
    assert os.path.exists(str(tmp_path / "cli_text_document.idx"))
    strict = subprocess.run(cmd + ["--strict", "--output-prefix", str(tmp_path / "strict")], capture_output=True,
                            text=True, timeout=120)
    assert strict.returncode == 2 and "b.jsonl:2: malformed_json" in strict.stderr
    merged = subprocess.run(
        [sys.executable, str(REPO / "tools" / "merge_datasets.py"), "--input", str(tmp_path / "cli_text_document"),
         str(tmp_path / "cli_text_document.idx"), "--output-prefix", str(tmp_path / "twice")],
        capture_output=True, text=True, timeout=60,
    )
    # The same prefix given twice is taken once.
    assert merged.returncode == 0, merged.stderr
    assert IndexedDatasetReader(str(tmp_path / "twice")).num_documents == 52


def test_inspect_dataset_cli(tmp_path, docs, tok, sp_model_path):
    write_jsonl(tmp_path / "a.jsonl", docs[:40])
    run(tmp_path, [tmp_path / "a.jsonl"], sp_model_path, append_eod=True)
    prefix = output_prefix_for(str(tmp_path / "out"), "text")
    out = subprocess.run([sys.executable, str(REPO / "tools" / "inspect_dataset.py"), prefix, "--samples", "2",
                          "--max-chars", "10000"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    total = sum(len(t) for t in expected_tokens(tok, docs[:40]))
    assert f"documents 40   sequences 40   tokens {total:,}" in out.stdout
    assert "length histogram" in out.stdout
    shown = [line.strip() for line in out.stdout.splitlines() if line.startswith("    ")]
    assert len(shown) == 2 and all(s in [d.replace("\n", "\\n") for d in docs[:40]] for s in shown)
    as_json = subprocess.run([sys.executable, str(REPO / "tools" / "inspect_dataset.py"), prefix, "--json"],
                             capture_output=True, text=True, timeout=60)
    stats = json.loads(as_json.stdout)
    assert stats["tokens"] == total and sum(c for _, _, c in stats["histogram"]) == 40
    bad = subprocess.run([sys.executable, str(REPO / "tools" / "inspect_dataset.py"), str(tmp_path / "nothing")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_sidecar_records_tokenizer_sources_and_skips(tmp_path, sp_model_path):
    write_bad(tmp_path / "bad.jsonl")
    write_jsonl(tmp_path / "good.jsonl", ["一", "二"])
    run(tmp_path, [tmp_path / "bad.jsonl", tmp_path / "good.jsonl"], sp_model_path, per_shard=True)
    bad = IndexedDatasetReader(output_prefix_for(str(tmp_path / "out"), "text", "bad")).metadata
    good = IndexedDatasetReader(output_prefix_for(str(tmp_path / "out"), "text", "good")).metadata
    assert bad["skipped"]["malformed_json"] == 2 and good["skipped"] == {}
    assert good["sources"] == [str(tmp_path / "good.jsonl")] and good["documents"] == 2
    assert good["model_path"] == os.path.abspath(sp_model_path) and good["vocab_size"] == 64000
    reader = IndexedDatasetReader(output_prefix_for(str(tmp_path / "out"), "text", "good"))
    reader.check_tokenizer(load_tokenizer("sentencepiece", str(sp_model_path)))
    other = tmp_path / "other"
    from megactllm.tokenizer.train import TokenizerTrainingSettings, train_sentencepiece

    small = train_sentencepiece(TokenizerTrainingSettings(input=[str(REPO / "examples" / "data" / "sample_corpus.jsonl")],
                                            model_prefix=str(other), vocab_size=1200, num_threads=1))
    with pytest.raises(ValueError, match="vocabulary of 64000"):
        reader.check_tokenizer(load_tokenizer("sentencepiece", small))


def test_prefetch_stops_cleanly_and_passes_errors_on():
    from megactllm.data.pretrain.preprocess import _prefetch

    def endless():
        i = 0
        while True:
            yield i
            i += 1

    taken = []
    for item in _prefetch(endless()):  # the consumer leaves early: the reader thread must not hang
        taken.append(item)
        if item == 10:
            break
    assert taken == list(range(11))

    def broken():
        yield 1
        raise ValueError("bad input at line 2")

    with pytest.raises(ValueError, match="line 2"):
        list(_prefetch(broken()))


def _die(task):
    os.kill(os.getpid(), 9)  # what the OOM killer does to a worker


def test_a_killed_worker_is_an_error_not_a_hang(tmp_path, docs, sp_model_path, monkeypatch):
    import megactllm.data.pretrain.preprocess as pre

    write_jsonl(tmp_path / "a.jsonl", docs[:50])
    monkeypatch.setattr(pre, "_work", _die)  # forked workers inherit the patched module
    monkeypatch.setattr(pre, "THREADS_PER_PROCESS", 1)  # two workers are two processes, not threads
    with pytest.raises(PreprocessError, match="worker died"):
        run(tmp_path, [tmp_path / "a.jsonl"], sp_model_path, workers=2)
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob("*part*"))


def test_plan_workers(tok):
    import megactllm.data.pretrain.preprocess as pre

    assert pre.plan_workers(1, tok) == (1, 1)
    assert pre.plan_workers(2, tok) == (1, 2)
    assert pre.plan_workers(pre.THREADS_PER_PROCESS, tok) == (1, pre.THREADS_PER_PROCESS)
    processes, threads = pre.plan_workers(4 * pre.THREADS_PER_PROCESS + 1, tok)
    assert processes == 5 and processes * threads >= 4 * pre.THREADS_PER_PROCESS + 1 and threads <= pre.THREADS_PER_PROCESS

    class SingleThreaded:  # a tokenizer without native batch threads: one process per worker
        pass

    assert pre.plan_workers(3, SingleThreaded()) == (3, 1)
