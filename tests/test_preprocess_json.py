"""The orjson fast path for jsonl gives exactly what the json.loads path gives: texts, tokens, skips."""
import json

import pytest

import megactllm.common.corpus as readers
from megactllm.data.pretrain.preprocess import PreprocessConfig, output_prefix_for, preprocess
from megactllm.common.corpus import Chunk, read_batches
from megactllm.tokenizer import load_tokenizer

orjson = pytest.importorskip("orjson")

TRICKY = [
    b'{"text": "plain ascii"}',
    '{"text": "中文，全角标点。"}'.encode(),
    b'{"text": "quote \\" backslash \\\\ slash \\/ controls \\b\\f\\n\\r\\t end"}',
    b'{"text": "unicode escapes \\u4e2d\\u6587 \\u00e9 \\u0000 nul"}',
    b'{"text": "surrogate pair \\ud83d\\ude00 and raw \xf0\x9f\x98\x80"}',
    b'{"text": "lone high surrogate \\ud800 here"}',
    b'{"text": "lone low surrogate \\udc00 here"}',
    b'{"text": "reversed pair \\ude00\\ud83d"}',
    b'{"text": "encoded surrogate \xed\xa0\x80"}',
    b'{"text": "overlong \xc0\x80"}',
    b'{"text": "truncated \xe4\xb8"}',
    b'{"text": "latin-1 \xe9"}',
    b'\xef\xbb\xbf{"text": "bom"}',
    b'{"text": "raw tab \t inside"}',
    b'{"text": "raw del \x7f inside"}',
    b'{"text": "trailing cr"}\r',
    b'  {"text": "padded"}  ',
    b'{"id": 1, "meta": {"text": "nested, not ours"}, "text": "after nested"}',
    b'{"meta": {"text": "only nested"}}',
    b'{"text": "first", "text": "last wins"}',
    b'{"text": "nan elsewhere", "score": NaN}',
    b'{"text": "inf elsewhere", "score": -Infinity}',
    b'{"text": "huge number elsewhere", "n": 123456789012345678901234567890}',
    b'{"text": "big exponent", "x": 1e999}',
    b'{"text": 123456789012345678901234567890}',
    b'{"text": 1.5}',
    b'{"text": true}',
    b'{"text": ["a"]}',
    b'{"text": {"a": 1}}',
    b'{"text": null}',
    b'{"text": ""}',
    b'{"text": " \\u3000 \\n"}',
    b'{"text": "\\u00a0"}',
    b'{"Text": "case matters"}',
    b'{"text": "x"} trailing',
    b'{"text": "x"}{"text": "y"}',
    b'{"text": "unterminated',
    b'{"text": "x",}',
    b"{'text': 'single quotes'}",
    b'"just a string"',
    b'[{"text": "array"}]',
    b'null',
    b'',
    b'   ',
    b'\r',
    # Shapes at the edge of the C++ scanner's plain `{"key": "value"}` lines.
    b'{"text":"compact form"}',
    b'{"text": "a"}}',
    b'{"text": "a" }',
    b'{"text": "a", "x": "b"}',
    b'{"text": "a"}\r\r',
    b'{"text": " leading space, then text"}',
    '{"text": "\u3000全角空格开头"}'.encode(),
    '{"text": "\u3000\u2003"}'.encode(),
    b'{"text": "\x85 nel as a raw byte"}',
    '{"text": "\u0085 nel as a character"}'.encode(),
    b'{"text": "\x1f unit separator"}',
    b'{"text": "\xf4\x90\x80\x80 above U+10FFFF"}',
    b'{"text": "\xf0\x8f\xbf\xbf overlong four"}',
    b'{"text": "\xe0\x9f\xbf overlong three"}',
    b'{"text": "\xf4\x8f\xbf\xbf U+10FFFF itself"}',
    b'{"text": "\xee\x80\x80 private use"}',
    b'{"text": "x"}{"text": "y"}',
    b'{"text": "ok at the end"}',
]


def batches(path, keys, monkeypatch=None, fast=True, **kw):
    if not fast:
        monkeypatch.setattr(readers, "_fast_loads", None)
    size = path.stat().st_size
    out = list(read_batches(Chunk(str(path), "jsonl", 0, 0, size, raw_bytes=size), keys, **kw))
    if not fast:
        monkeypatch.undo()
    return out


def flat(bs):
    texts, skips = {}, []
    for b in bs:
        for k, v in b.texts.items():
            # utf8_bytes texts are compared as the text they stand for
            texts.setdefault(k, []).extend(t.decode("utf-8") if isinstance(t, bytes) else t for t in v)
        skips.extend((s.line, s.reason, s.detail) for s in b.skips)
    return texts, skips, [(b.text_bytes, b.raw_bytes, b.lines, len(b.skips)) for b in bs]


@pytest.mark.parametrize("utf8_bytes", [False, True])
@pytest.mark.parametrize("batch_docs", [1, 3, 4096])
def test_fast_path_matches_json_loads_on_tricky_lines(tmp_path, monkeypatch, batch_docs, utf8_bytes):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n".join(TRICKY) + b"\n")
    fast = flat(batches(path, ["text"], batch_docs=batch_docs, utf8_bytes=utf8_bytes))
    slow = flat(batches(path, ["text"], monkeypatch, fast=False, batch_docs=batch_docs))
    assert fast == slow
    texts = fast[0]["text"]
    # What json.loads itself says about every line the reader kept, in order.
    want = []
    for line in TRICKY:
        try:
            value = json.loads(line.rstrip(b"\r").decode("utf-8")).get("text")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, str) and value and not value.isspace():
            want.append(value)
    assert texts == want
    assert "surrogate pair \U0001F600 and raw \U0001F600" in texts
    assert "lone high surrogate \ud800 here" in texts  # json.loads keeps it; orjson refuses and falls back
    assert "last wins" in texts and "after nested" in texts
    reasons = {r for _, r, _ in fast[1]}
    assert reasons == {"malformed_json", "invalid_utf8", "missing_key", "not_text", "empty"}


def test_fast_path_matches_json_loads_with_several_keys(tmp_path, monkeypatch):
    lines = [
        b'{"title": "t1", "text": "body one"}',
        b'{"text": "no title"}',
        b'{"title": 7, "text": "numeric title"}',
        b'{"title": "", "text": "empty title"}',
        b'{"title": "t2", "text": null}',
        b'{"text": "body \\ud83d\\ude00", "title": "keys in the other order"}',
        b'{"title": "t3", "text": "lone \\udfff"}',
    ]
    path = tmp_path / "k.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    for keys in (["text", "title"], ["title", "text"]):
        fast = flat(batches(path, keys, batch_docs=2))
        assert fast == flat(batches(path, keys, monkeypatch, fast=False, batch_docs=2))
        assert fast[0]["text"] == ["body one", "body \U0001F600", "lone \udfff"]


def test_fast_path_gives_identical_datasets(tmp_path, shared_data, sp_model_path, monkeypatch):
    lines = (shared_data / "corpus" / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines()
    docs = [l for l in lines if l.strip()][:200]
    body = [json.dumps({"text": t}, ensure_ascii=ascii_).encode() for t in docs for ascii_ in (False, True)]
    # Escaped and unescaped forms of the same texts, interleaved with every tricky line that has no
    # lone surrogate (SentencePiece cannot encode one, with either parser).
    body += [l for l in TRICKY if b"lone" not in l and b"reversed" not in l]
    (tmp_path / "c.jsonl").write_bytes(b"\n".join(body) + b"\n")

    def run(name):
        return preprocess(PreprocessConfig(
            input=[str(tmp_path / "c.jsonl")], output_prefix=str(tmp_path / name), tokenizer_type="sentencepiece",
            tokenizer_model=str(sp_model_path), append_eod=True, chunk_bytes=64 << 10,
        ))

    fast = run("fast")
    monkeypatch.setattr(readers, "_fast_loads", None)
    slow = run("slow")
    assert (fast.documents, fast.tokens, fast.text_bytes, fast.skipped, fast.first_skips) == (
        slow.documents, slow.tokens, slow.text_bytes, slow.skipped, slow.first_skips)
    for ext in (".bin", ".idx"):
        a = (tmp_path / (output_prefix_for("fast", "text") + ext)).read_bytes()
        b = (tmp_path / (output_prefix_for("slow", "text") + ext)).read_bytes()
        assert a == b
    tok = load_tokenizer("sentencepiece", str(sp_model_path))
    from megactllm.data.pretrain.indexed import IndexedDatasetReader

    r = IndexedDatasetReader(str(tmp_path / output_prefix_for("fast", "text")))
    assert r[0].tolist() == tok.encode(docs[0]) + [tok.eod_id]
    assert r[1].tolist() == r[0].tolist()  # \\uXXXX-escaped and raw UTF-8 give the same tokens


def test_scanner_takes_plain_lines_and_stops_at_anything_else():
    from megactllm._indexed_builder import scan_simple_jsonl

    data = '{"text": "一"}\n{"text":"two"}\r\n{"text": "th\\u0072ee"}\n{"text": "four"}'.encode()
    for as_bytes, want in ((False, ["一", "two"]), (True, ["一".encode(), b"two"])):
        texts = []
        pos, lines, consumed, text_bytes = scan_simple_jsonl(
            data, 0, b'{"text": "', b'{"text":"', texts, 0, 100, 0, 1 << 20, as_bytes)
        assert texts == want and lines == 2
        assert data[pos:].startswith(b'{"text": "th')  # an escape: left for the full parser
        assert consumed == pos and text_bytes == len('{"text": "一"}'.encode()) + len(b'{"text":"two"}')
        # from the last line, which has no newline: consumed still counts one for it, as the line reader does
        last = data.rindex(b"\n") + 1
        texts = []
        pos, lines, consumed, _ = scan_simple_jsonl(data, last, b'{"text": "', b'{"text":"', texts, 0, 100, 0, 1 << 20,
                                                    as_bytes)
        assert pos == len(data) and lines == 1 and consumed == len(data) - last + 1
    # batch limits: stops once the documents or the text bytes reach them
    texts = []
    pos, lines, _, _ = scan_simple_jsonl(b'{"text": "a"}\n' * 5, 0, b'{"text": "', b'{"text":"', texts, 1, 3, 0, 1 << 20)
    assert lines == 2 and len(texts) == 2


def test_blocks_split_compressed_input_on_line_boundaries(tmp_path, monkeypatch):
    import gzip

    lines = [json.dumps({"text": f"第{i}行 " * (i % 7 + 1)}, ensure_ascii=bool(i % 3 == 0)).encode() for i in range(300)]
    lines[17] = b'{"text": "bad \xff"}'
    lines[150] = b""
    raw = b"\n".join(lines)  # no newline at the very end
    (tmp_path / "c.jsonl").write_bytes(raw)
    with gzip.open(tmp_path / "c.jsonl.gz", "wb") as f:
        f.write(raw)
    chunk = Chunk(str(tmp_path / "c.jsonl.gz"), "jsonl", 0, 0, None, raw_bytes=100)
    for size in (1, 7, 64, 1 << 20):
        assert b"".join(d[p:] for d, p in readers._chunk_blocks(chunk, size)) == raw
    monkeypatch.setattr(readers, "_chunk_blocks", lambda c, block_bytes=64: _orig_blocks(c, 64))
    got = flat(list(read_batches(chunk, ["text"], batch_docs=10)))
    monkeypatch.undo()
    monkeypatch.setattr(readers, "_fast_loads", None)
    want = flat(list(read_batches(chunk, ["text"], batch_docs=10)))
    assert got == want and len(got[0]["text"]) == 298
    assert [s[:2] for s in got[1]] == [(18, "invalid_utf8"), (151, "empty")]


_orig_blocks = readers._chunk_blocks


@pytest.mark.parametrize("cut", [1, 50, 333, 1000, 4095])
def test_chunked_ranges_match_the_line_reader(tmp_path, monkeypatch, cut):
    lines = [json.dumps({"text": "词" * (i % 13 + 1) + str(i)}, ensure_ascii=False).encode() for i in range(200)]
    raw = b"\n".join(lines) + b"\n"
    (tmp_path / "r.jsonl").write_bytes(raw)
    chunks = readers.plan_chunks([str(tmp_path / "r.jsonl")], cut)
    got = [t for c in chunks for b in read_batches(c, ["text"]) for t in b.texts["text"]]
    monkeypatch.setattr(readers, "_fast_loads", None)
    want = [t for c in chunks for b in read_batches(c, ["text"]) for t in b.texts["text"]]
    assert got == want == [json.loads(l)["text"] for l in lines]
