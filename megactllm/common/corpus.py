"""Raw-text inputs for tokenization: jsonl, one-document-per-line text and parquet, plain or
.gz/.zst compressed, found from a file, a glob or a directory.

Large uncompressed text files are cut into byte ranges ("chunks") on line boundaries so that
several workers can share one file; compressed files and parquet row groups are read whole.
Readers never raise on a bad record: they yield a `Skip` with the reason and the line, and the
caller decides (count it, or stop under --strict).
"""
from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from megactllm.errors import UserError
from megactllm._indexed_builder import scan_simple_jsonl as _scan_simple_jsonl
from megactllm.common.optional import require

try:  # a hard dependency (setup.py); the fallback keeps a bare environment working, only slower
    import orjson

    _fast_loads = orjson.loads
    _FastDecodeError = orjson.JSONDecodeError
except ImportError:  # pragma: no cover
    _fast_loads = None
    _FastDecodeError = ValueError

FORMATS = ("jsonl", "text", "parquet")
_FORMAT_OF_SUFFIX = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "text",
    ".text": "text",
    ".parquet": "parquet",
}
COMPRESSIONS = (".gz", ".zst", ".zstd")

# Why a record was left out; the order is the order of the summary.
SKIP_REASONS = {
    "malformed_json": "line is not a JSON object",
    "invalid_utf8": "bytes are not UTF-8",
    "missing_key": "a --json-keys key is absent or null",
    "not_text": "a --json-keys value is not a string",
    "empty": "document is empty or whitespace only",
}


class InputError(UserError, ValueError):
    """An input that cannot be read at all (missing file, unknown format, missing parquet column)."""


@dataclass
class Skip:
    path: str
    line: int  # 1-based line (row, for parquet) inside the chunk; see Chunk.line_base
    reason: str
    detail: str = ""

    def where(self, line_base: int = 0) -> str:
        return f"{self.path}:{self.line + line_base}"


@dataclass
class Chunk:
    """A piece of one input file that one worker reads."""

    path: str
    fmt: str
    index: int  # position among the chunks of its file
    start: int = 0  # byte range [start, end) for uncompressed text formats
    end: int | None = None
    row_groups: list | None = None  # parquet only
    line_base: int | None = 0  # lines before the chunk; None = known only after earlier chunks
    raw_bytes: int = 0  # on-disk bytes this chunk covers (for the ETA)


@dataclass
class Batch:
    """Documents read together: texts[key][i] is record i's text for that key."""

    texts: dict = field(default_factory=dict)
    skips: list = field(default_factory=list)
    text_bytes: int = 0
    raw_bytes: int = 0
    lines: int = 0  # lines/rows consumed (records and skips)


def strip_compression(path: str) -> tuple[str, str | None]:
    for suffix in COMPRESSIONS:
        if path.endswith(suffix):
            return path[: -len(suffix)], suffix
    return path, None


def detect_format(path: str, forced: str | None = None, hint: str = "pass --input-format") -> str:
    """The format of `path` (jsonl, text or parquet), from `forced` or else from its name; `hint` says
    how the caller's user names the format when the name does not tell."""
    if forced:
        if forced not in FORMATS:
            raise InputError(f"unknown input format {forced!r}; expected one of {FORMATS}")
        return forced
    base, _ = strip_compression(path)
    fmt = _FORMAT_OF_SUFFIX.get(os.path.splitext(base)[1].lower())
    if fmt is None:
        raise InputError(
            f"{path}: cannot tell the format from the name (known: {sorted(_FORMAT_OF_SUFFIX)} optionally "
            f"with {COMPRESSIONS}); {hint}"
        )
    return fmt


def _is_input_name(name: str) -> bool:
    base, _ = strip_compression(name)
    return os.path.splitext(base)[1].lower() in _FORMAT_OF_SUFFIX


def expand_inputs(specs: str | Sequence[str]) -> list[str]:
    """Files named by each spec: a file, a glob, or a directory (searched recursively for known formats)."""
    if isinstance(specs, str):
        specs = [specs]
    found: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            hits = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(spec)
                for name in names
                if _is_input_name(name)
            )
            if not hits:
                raise InputError(f"directory {spec} holds no jsonl/txt/parquet files")
        elif os.path.isfile(spec):
            hits = [spec]
        else:
            hits = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not hits:
                raise InputError(f"--input {spec}: no such file, directory or matching glob")
        found.extend(h for h in hits if h not in found)
    return found


def open_binary(path: str) -> BinaryIO:
    """The decompressed byte stream of `path`."""
    _, compression = strip_compression(path)
    raw = open(path, "rb")
    if compression == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression in (".zst", ".zstd"):
        import zstandard

        # Across frames: zstd files written in pieces (pzstd, appended shards) hold several.
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True, read_across_frames=True)
        return io.BufferedReader(reader, 1 << 20)
    return raw


def plan_chunks(paths: Sequence[str], chunk_bytes: int = 16 << 20, forced_format: str | None = None) -> list[Chunk]:
    """Chunks covering every input in order."""
    chunks: list[Chunk] = []
    for path in paths:
        fmt = detect_format(path, forced_format)
        size = os.path.getsize(path)
        compressed = strip_compression(path)[1] is not None
        if fmt == "jsonl":
            _refuse_json_array(path)
        if fmt == "parquet":
            chunks.extend(_parquet_chunks(path, chunk_bytes))
        elif compressed:
            chunks.append(Chunk(path, fmt, 0, 0, None, raw_bytes=size))
        elif size <= chunk_bytes:
            chunks.append(Chunk(path, fmt, 0, 0, size, raw_bytes=size))
        else:
            starts = list(range(0, size, chunk_bytes))
            for i, start in enumerate(starts):
                end = min(start + chunk_bytes, size)
                chunks.append(Chunk(path, fmt, i, start, end, line_base=0 if i == 0 else None, raw_bytes=end - start))
    return chunks


def _refuse_json_array(path: str) -> None:
    # A .json file holding one big array (as many instruction sets do) would otherwise count every
    # line as malformed; say what it is instead.
    with open_binary(path) as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        raise InputError(f"{path} is one JSON array, not JSON lines (one object per line); convert it to .jsonl first")


def _parquet_chunks(path: str, chunk_bytes: int) -> list[Chunk]:
    pq = require("pyarrow.parquet", "reading parquet files")

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise InputError(f"{path} is not a readable parquet file: {exc}") from exc
    size = os.path.getsize(path)
    chunks, group, group_bytes, rows_before, group_start = [], [], 0, 0, 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        group.append(g)
        group_bytes += rg.total_byte_size
        rows_before += rg.num_rows
        if group_bytes >= chunk_bytes or g == meta.num_row_groups - 1:
            share = size * len(group) // max(meta.num_row_groups, 1)
            chunks.append(Chunk(path, "parquet", len(chunks), row_groups=group, line_base=group_start, raw_bytes=share))
            group_start, group, group_bytes = rows_before, [], 0
    if not chunks:  # a file with no row groups still yields an (empty) chunk so it is accounted for
        chunks.append(Chunk(path, "parquet", 0, row_groups=[], raw_bytes=size))
    return chunks


def _chunk_lines(chunk: Chunk) -> Iterator[bytes]:
    """Raw lines of a chunk; a line belongs to the chunk where its first byte lies."""
    if chunk.end is None:
        with open_binary(chunk.path) as f:
            for line in f:
                yield line[:-1] if line.endswith(b"\n") else line
        return
    with open(chunk.path, "rb") as f:
        skip_first = False
        if chunk.start > 0:
            f.seek(chunk.start - 1)
            skip_first = f.read(1) != b"\n"
        data = f.read(chunk.end - chunk.start)
        if data and not data.endswith(b"\n"):
            data += f.readline()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if skip_first and lines:
        lines = lines[1:]
    # Lines are yielded with their newline stripped; the caller only needs their content.
    yield from lines


def read_batches(
    chunk: Chunk, keys: Sequence[str], batch_bytes: int = 1 << 20, batch_docs: int = 4096, utf8_bytes: bool = False
) -> Iterator[Batch]:
    """Batches of documents of one chunk, with bad records as `Skip`s.

    With `utf8_bytes` a text may come as its UTF-8 bytes instead of str (only for a tokenizer whose
    encode gives the same ids for both, see SentencePieceTokenizer.accepts_utf8_bytes).
    """
    if chunk.fmt == "parquet":
        yield from _parquet_batches(chunk, keys, batch_docs)
        return
    if chunk.fmt == "text" and len(keys) != 1:
        raise InputError(f"{chunk.path}: a plain-text file has one document per line, so give one --json-keys name")
    if chunk.fmt == "jsonl" and _fast_loads is not None:
        yield from _jsonl_batches(chunk, keys, batch_bytes, batch_docs, utf8_bytes)
        return
    batch = _new_batch(keys)
    raw_size = chunk.raw_bytes
    consumed = 0
    for number, line in enumerate(_chunk_lines(chunk), start=1):
        consumed += len(line) + 1
        batch.lines += 1
        _parse_line(chunk, number, line, keys, batch)
        if batch.text_bytes >= batch_bytes or len(batch.texts[keys[0]]) >= batch_docs:
            batch.raw_bytes = _raw_progress(chunk, consumed, raw_size)
            raw_size -= batch.raw_bytes
            consumed = 0
            yield batch
            batch = _new_batch(keys)
    batch.raw_bytes = raw_size  # whatever is left of the chunk, so the totals add up exactly
    yield batch


def _chunk_blocks(chunk: Chunk, block_bytes: int = 4 << 20) -> Iterator[tuple[bytes, int]]:
    """(data, start): the chunk's lines as large blocks of bytes, lines starting at data[start:].

    Each block holds whole lines (the last one may lack its newline at the end of the input), with
    the same line ownership as `_chunk_lines`: a line belongs to the chunk where its first byte lies.
    """
    if chunk.end is None:
        with open_binary(chunk.path) as f:
            pending: list[bytes] = []  # the start of a line longer than a block: joined once, not re-copied
            while True:
                block = f.read(block_bytes)
                if not block:
                    break
                cut = block.rfind(b"\n") + 1
                if cut == 0:
                    pending.append(block)
                    continue
                head = block if cut == len(block) else block[:cut]
                if pending:
                    pending.append(head)
                    head = b"".join(pending)
                    pending = []
                yield head, 0
                if cut < len(block):
                    pending.append(block[cut:])
            if pending:
                yield b"".join(pending), 0
        return
    with open(chunk.path, "rb") as f:
        skip_first = False
        if chunk.start > 0:
            f.seek(chunk.start - 1)
            skip_first = f.read(1) != b"\n"
        data = f.read(chunk.end - chunk.start)
        if data and not data.endswith(b"\n"):
            data += f.readline()
    start = 0
    if skip_first:
        start = data.find(b"\n") + 1
        if start == 0:
            return
    yield data, start


def _jsonl_batches(
    chunk: Chunk, keys: Sequence[str], batch_bytes: int, batch_docs: int, utf8_bytes: bool = False
) -> Iterator[Batch]:
    """read_batches for jsonl: large blocks, the text of plain one-key lines taken by the C++ scanner,
    every other line parsed by orjson on its raw bytes (no separate UTF-8 decode).

    The scanner takes only lines that are exactly `{"key": "<value>"}` (`{"key":"..."}` too) whose
    value has no escape, no quote and no control byte, is valid UTF-8 and does not start with
    whitespace: json.loads gives that same text. orjson takes a record only when it parses the line
    into an object whose every key holds a non-blank string; anything else (a parse error, invalid
    UTF-8, a lone surrogate escape, NaN, a missing/null/non-string/blank value) goes through
    `_parse_line`, the json.loads path, so records, texts, skip reasons and details are exactly
    what json.loads gives. orjson is strict RFC 8259 and never accepts a line json.loads rejects; on
    what both accept they agree on strings (duplicate keys included: the last wins in both).
    With `utf8_bytes` the scanner's texts are their UTF-8 bytes (checked as strictly as
    bytes.decode), not str: for a tokenizer that encodes UTF-8 bytes as it encodes the text.
    """
    loads, decode_error, parse_line = _fast_loads, _FastDecodeError, _parse_line
    single = keys[0] if len(keys) == 1 else None
    if single is not None:
        literal = json.dumps(single, ensure_ascii=False).encode("utf-8")
        prefix1, prefix2 = b"{" + literal + b': "', b"{" + literal + b':"'
    batch = _new_batch(keys)
    texts = batch.texts[keys[0]]
    raw_size = chunk.raw_bytes
    consumed = text_bytes = lines = number = 0
    for data, pos in _chunk_blocks(chunk):
        size = len(data)
        while pos < size:
            if single is not None:
                pos, n_lines, n_consumed, text_bytes = _scan_simple_jsonl(
                    data, pos, prefix1, prefix2, texts, len(texts), batch_docs, text_bytes, batch_bytes, utf8_bytes
                )
                number += n_lines
                lines += n_lines
                consumed += n_consumed
            if pos < size and text_bytes < batch_bytes and len(texts) < batch_docs:
                # One line the scanner left: orjson, or the exact json.loads path.
                nl = data.find(b"\n", pos)
                if nl < 0:
                    nl = size
                line = data[pos:nl]
                pos = nl + 1
                n = len(line)
                number += 1
                consumed += n + 1
                lines += 1
                try:
                    record = loads(line)
                except decode_error:
                    record = None
                if type(record) is dict:
                    if single is not None:
                        value = record.get(single)
                        if type(value) is str and value and not value.isspace():
                            texts.append(value)
                            text_bytes += n - 1 if line.endswith(b"\r") else n
                            record = True
                    else:
                        values = [record.get(k) for k in keys]
                        if all(type(v) is str and v and not v.isspace() for v in values):
                            for k, v in zip(keys, values):
                                batch.texts[k].append(v)
                            text_bytes += n - 1 if line.endswith(b"\r") else n
                            record = True
                if record is not True:  # the exact json.loads path decides (and classifies any skip)
                    batch.text_bytes = text_bytes
                    parse_line(chunk, number, line, keys, batch)
                    text_bytes = batch.text_bytes
            if text_bytes >= batch_bytes or len(texts) >= batch_docs:
                batch.text_bytes, batch.lines = text_bytes, lines
                batch.raw_bytes = _raw_progress(chunk, consumed, raw_size)
                raw_size -= batch.raw_bytes
                consumed = text_bytes = lines = 0
                yield batch
                batch = _new_batch(keys)
                texts = batch.texts[keys[0]]
    batch.text_bytes, batch.lines = text_bytes, lines
    batch.raw_bytes = raw_size  # whatever is left of the chunk, so the totals add up exactly
    yield batch


def _raw_progress(chunk: Chunk, consumed: int, left: int) -> int:
    # For compressed files consumed counts decompressed bytes: a guess at on-disk progress,
    # capped so the file's total still adds up.
    return min(consumed, left) if chunk.end is not None else min(consumed // 4, left)


def _new_batch(keys: Sequence[str]) -> Batch:
    return Batch(texts={k: [] for k in keys})


def _parse_line(chunk: Chunk, number: int, line: bytes, keys: Sequence[str], batch: Batch) -> None:
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        batch.skips.append(Skip(chunk.path, number, "invalid_utf8", f"byte {exc.start}: {line[max(0, exc.start - 8):exc.start + 8]!r}"))
        return
    if chunk.fmt == "text":
        if not text or text.isspace():
            batch.skips.append(Skip(chunk.path, number, "empty", "blank line"))
            return
        batch.texts[keys[0]].append(text)
        batch.text_bytes += len(line)
        return
    if not text or text.isspace():
        batch.skips.append(Skip(chunk.path, number, "empty", "blank line"))
        return
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        batch.skips.append(Skip(chunk.path, number, "malformed_json", f"{exc.msg} at column {exc.colno}"))
        return
    if not isinstance(record, dict):
        batch.skips.append(Skip(chunk.path, number, "malformed_json", f"a JSON {type(record).__name__}, not an object"))
        return
    _add_record(chunk.path, number, record, keys, batch, len(line))


def _add_record(path: str, number: int, record: dict, keys: Sequence[str], batch: Batch, nbytes: int) -> None:
    # A record is taken only when every key has text, so the per-key datasets stay aligned.
    values = []
    for key in keys:
        value = record.get(key)
        if value is None:
            batch.skips.append(Skip(path, number, "missing_key", f"no {key!r}" if key not in record else f"{key!r} is null"))
            return
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                batch.skips.append(Skip(path, number, "invalid_utf8", f"{key!r} byte {exc.start}"))
                return
        if not isinstance(value, str):
            batch.skips.append(Skip(path, number, "not_text", f"{key!r} is a {type(value).__name__}"))
            return
        if not value or value.isspace():  # isspace() does not copy a long text the way strip() does
            batch.skips.append(Skip(path, number, "empty", f"{key!r} is empty"))
            return
        values.append(value)
    for key, value in zip(keys, values):
        batch.texts[key].append(value)
    batch.text_bytes += nbytes


def _parquet_batches(chunk: Chunk, keys: Sequence[str], batch_docs: int) -> Iterator[Batch]:
    pq = require("pyarrow.parquet", "reading parquet files")

    pf = pq.ParquetFile(chunk.path)
    missing = [k for k in keys if k not in pf.schema_arrow.names]
    if missing:
        raise InputError(f"{chunk.path} has no column {missing} (columns: {pf.schema_arrow.names}); check --json-keys")
    rows = sum(pf.metadata.row_group(g).num_rows for g in chunk.row_groups or [])
    # On-disk bytes are not known per batch: spread the chunk's share evenly over its batches.
    per_batch = chunk.raw_bytes // max(1, -(-rows // batch_docs))
    raw_left, row = chunk.raw_bytes, 0
    if chunk.row_groups:
        for record_batch in pf.iter_batches(batch_size=batch_docs, row_groups=chunk.row_groups, columns=list(keys)):
            columns = {k: record_batch.column(k).to_pylist() for k in keys}
            batch = _new_batch(keys)
            for i in range(record_batch.num_rows):
                row += 1
                _add_record(chunk.path, row, {k: columns[k][i] for k in keys}, keys, batch, 0)
            batch.text_bytes = record_batch.nbytes  # UTF-8 bytes of the columns (plus offsets)
            batch.lines = record_batch.num_rows
            batch.raw_bytes = min(raw_left, per_batch)
            raw_left -= batch.raw_bytes
            yield batch
    yield Batch(texts={k: [] for k in keys}, raw_bytes=raw_left)
