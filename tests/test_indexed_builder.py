"""The C++ builder against megatron-core's own writer and reader: byte for byte, both ways."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megactllm.data.pretrain.indexed import (
    DatasetFormatError,
    IndexedDatasetReader,
    IndexedDatasetWriter,
    dtype_for_vocab,
    merge_datasets,
    read_index_header,
)


def random_docs(rng, n, vocab, max_len=40):
    # Includes empty documents, which megatron-core accepts and some corpora produce.
    return [rng.integers(0, vocab, size=int(rng.integers(0, max_len))) for _ in range(n)]


def megatron_build(prefix, docs, dtype):
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in docs:
        builder.add_item(torch.from_numpy(doc.astype(np.int64)))
        builder.end_document()
    builder.finalize(prefix + ".idx")


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("vocab", [1000, 65499, 65500, 200_000])
def test_byte_identical_to_megatron_builder(tmp_path, vocab):
    rng = np.random.default_rng(vocab)
    docs = random_docs(rng, 300, vocab)
    dtype = dtype_for_vocab(vocab)
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    with IndexedDatasetWriter(ours, vocab_size=vocab) as w:
        for i, doc in enumerate(docs):
            # Three entry points, one result.
            if i % 3 == 0:
                w.add_document(doc)
            elif i % 3 == 1:
                w.add_token_lists([doc.tolist()])
            else:
                w.add_documents(doc, [len(doc)])
    megatron_build(theirs, docs, dtype.type)
    assert read_bytes(ours + ".bin") == read_bytes(theirs + ".bin")
    assert read_bytes(ours + ".idx") == read_bytes(theirs + ".idx")


def test_dtype_follows_vocabulary():
    assert dtype_for_vocab(65499) == np.uint16
    assert dtype_for_vocab(65500) == np.int32
    assert dtype_for_vocab(125_696) == np.int32


def test_multi_sequence_documents_match_megatron(tmp_path):
    rng = np.random.default_rng(0)
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    builder = IndexedDatasetBuilder(theirs + ".bin", dtype=np.int32)
    with IndexedDatasetWriter(ours, dtype=np.int32) as w:
        for _ in range(50):
            for _ in range(int(rng.integers(1, 4))):
                seq = rng.integers(0, 10**6, size=int(rng.integers(1, 20)))
                w.add_item(seq)
                builder.add_item(torch.from_numpy(seq))
            w.end_document()
            builder.end_document()
    builder.finalize(theirs + ".idx")
    assert read_bytes(ours + ".idx") == read_bytes(theirs + ".idx")
    assert read_bytes(ours + ".bin") == read_bytes(theirs + ".bin")


def test_megatron_reads_ours_and_we_read_megatrons(tmp_path):
    rng = np.random.default_rng(1)
    docs = random_docs(rng, 200, 64000)
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    with IndexedDatasetWriter(ours, vocab_size=64000) as w:
        for doc in docs:
            w.add_document(doc)
    megatron_build(theirs, docs, np.uint16)

    theirs_reading_ours = IndexedDataset(ours)
    ours_reading_theirs = IndexedDatasetReader(theirs)
    assert len(theirs_reading_ours) == len(ours_reading_theirs) == len(docs)
    assert ours_reading_theirs.num_documents == len(docs)
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(theirs_reading_ours[i], doc)
        np.testing.assert_array_equal(ours_reading_theirs[i], doc)
        np.testing.assert_array_equal(ours_reading_theirs.document(i), doc)
    np.testing.assert_array_equal(ours_reading_theirs.document_lengths(), [len(d) for d in docs])

    # Shards written by either tool merge into one (megatron-core's have no sidecar).
    merged = merge_datasets([theirs, ours], str(tmp_path / "both"))
    assert merged.num_documents == 2 * len(docs)
    both = IndexedDataset(str(tmp_path / "both"))
    np.testing.assert_array_equal(both[len(docs) + 3], docs[3])


@pytest.mark.parametrize(
    "dtype,bad", [(np.uint16, 65536), (np.uint16, -1), (np.int32, 2**31)]
)
def test_ids_outside_the_dtype_are_refused(tmp_path, dtype, bad):
    w = IndexedDatasetWriter(str(tmp_path / "d"), dtype=dtype)
    with pytest.raises((OverflowError, ValueError), match="does not fit|too large|overflow"):
        w.add_document(np.array([1, bad], dtype=np.int64))
    with pytest.raises((OverflowError, ValueError), match="does not fit|too large|overflow"):
        w.add_token_lists([[1, bad]])
    w.abort()
    assert os.listdir(tmp_path) == []


def test_top_uint16_id_round_trips(tmp_path):
    with IndexedDatasetWriter(str(tmp_path / "d"), dtype=np.uint16) as w:
        w.add_document([0, 65535])
    ds = IndexedDataset(str(tmp_path / "d"))  # keep it alive: its mmap dies with it
    assert list(ds[0]) == [0, 65535]


def test_merge_matches_megatron_add_index(tmp_path):
    rng = np.random.default_rng(2)
    parts = []
    for k in range(3):
        prefix = str(tmp_path / f"part{k}")
        with IndexedDatasetWriter(prefix, vocab_size=50000, metadata={"vocab_size": 50000}) as w:
            for doc in random_docs(rng, 40 + k, 50000):
                w.add_document(doc)
        parts.append(prefix)
    merged = merge_datasets(parts, str(tmp_path / "merged"))

    builder = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=np.uint16)
    for prefix in parts:
        builder.add_index(prefix)
    builder.finalize(str(tmp_path / "ref.idx"))
    assert read_bytes(str(tmp_path / "merged.idx")) == read_bytes(str(tmp_path / "ref.idx"))
    assert read_bytes(str(tmp_path / "merged.bin")) == read_bytes(str(tmp_path / "ref.bin"))
    assert merged.num_documents == 40 + 41 + 42
    assert merged.metadata["vocab_size"] == 50000


def test_merge_refuses_mixed_dtypes(tmp_path):
    for name, dtype in (("a", np.uint16), ("b", np.int32)):
        with IndexedDatasetWriter(str(tmp_path / name), dtype=dtype) as w:
            w.add_document([1, 2])
    with pytest.raises(DatasetFormatError, match="different dtypes"):
        merge_datasets([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "m"))
    assert not (tmp_path / "m.idx").exists()


def test_reader_refuses_truncated_bin(tmp_path):
    prefix = str(tmp_path / "d")
    with IndexedDatasetWriter(prefix, dtype=np.uint16) as w:
        w.add_document(list(range(100)))
    with open(prefix + ".bin", "r+b") as f:
        f.truncate(150)
    with pytest.raises(DatasetFormatError, match="truncated"):
        IndexedDatasetReader(prefix)
    with pytest.raises(DatasetFormatError, match="bad or short header"):
        (tmp_path / "x.idx").write_bytes(b"NOTANIDX" * 5)
        read_index_header(str(tmp_path / "x.idx"))


def test_reader_names_an_idx_of_another_bin_as_a_mismatch(tmp_path):
    """An .idx copied beside a larger dataset's .bin: the pair does not belong together; nothing
    was cut short, so the error must not say "truncated" (issue 31)."""
    small, large = str(tmp_path / "small"), str(tmp_path / "large")
    for prefix, n in ((small, 10), (large, 300)):
        with IndexedDatasetWriter(prefix, dtype=np.uint16) as w:
            w.add_document(list(range(n)))
    os.replace(small + ".idx", large + ".idx")
    with pytest.raises(DatasetFormatError, match="do not belong together") as err:
        IndexedDatasetReader(large)
    assert "truncated" not in str(err.value) and "large.idx" in str(err.value) and "large.bin" in str(err.value)


def test_exception_inside_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(str(tmp_path / "d"), dtype=np.uint16) as w:
            w.add_document([1, 2, 3])
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from megactllm.data.pretrain.indexed import IndexedDatasetWriter
    w = IndexedDatasetWriter(sys.argv[1], dtype=np.uint16)
    doc = np.arange(1000, dtype=np.uint16)
    print("writing", flush=True)
    while True:          # never finalizes: the parent kills it mid-way
        w.add_document(doc)
    """
)


def run_killed_writer(prefix):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, prefix], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    deadline = time.time() + 20
    while time.time() < deadline:  # wait until the .bin has real data in it
        if os.path.exists(prefix + ".bin.tmp") and os.path.getsize(prefix + ".bin.tmp") > 4 << 20:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_writer_killed_midway_leaves_no_index(tmp_path):
    prefix = str(tmp_path / "d")
    run_killed_writer(prefix)
    assert not os.path.exists(prefix + ".idx")
    assert not os.path.exists(prefix + ".bin")
    with pytest.raises(DatasetFormatError, match="does not exist"):
        IndexedDatasetReader(prefix)


def test_writer_killed_midway_keeps_previous_dataset(tmp_path):
    prefix = str(tmp_path / "d")
    with IndexedDatasetWriter(prefix, dtype=np.uint16) as w:
        w.add_document([7, 8, 9])
    run_killed_writer(prefix)
    old = IndexedDataset(prefix)
    assert len(old) == 1 and list(old[0]) == [7, 8, 9]
    assert IndexedDatasetReader(prefix).num_tokens == 3


MERGER = textwrap.dedent(
    """
    import resource, sys
    from megactllm.data.pretrain.indexed import IndexedDatasetWriter
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with IndexedDatasetWriter(sys.argv[2], dtype="uint16") as w:
        for _ in range(3):
            w.add_dataset(sys.argv[1])
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """
)


def test_merge_memory_does_not_grow_with_documents(tmp_path):
    # 2M one-token documents: a 40 MB index per part, 120 MB of index merged. Megatron's
    # Python lists would need hundreds of MB; the streaming merge needs a few copy buffers.
    src = str(tmp_path / "many")
    n = 2_000_000
    with IndexedDatasetWriter(src, dtype=np.uint16) as w:
        w.add_documents(np.ones(n, dtype=np.uint16), np.ones(n, dtype=np.int64))
    out = subprocess.run(
        [sys.executable, "-c", MERGER, src, str(tmp_path / "merged")], capture_output=True, text=True, check=True
    )
    grown_mb = int(out.stdout.strip())
    assert grown_mb < 40, f"merge grew RSS by {grown_mb} MB"
    header = read_index_header(str(tmp_path / "merged.idx"))
    assert header.document_count == header.sequence_count == 3 * n
