"""Pretraining data wiring: blend parsing, blend proportions, EOD loss mask, document resets, errors."""
import numpy as np
import pytest
from train_utils import EOD, VOCAB, write_corpus

from megactllm.config import load_config
from megactllm.data.blend import BlendError, parse_blend
from megactllm.data.pretrain.gpt_dataset import build_gpt_datasets
from megactllm.data.pretrain.indexed import DatasetFormatError
from megactllm.testing import run_distributed
from megactllm.training.batches import microbatch_indices


def test_parse_blend_forms():
    assert parse_blend("0.6 zh 0.3 en 0.1 code").weights == (0.6, 0.3, 0.1)
    b = parse_blend(["0.6", "zh", "0.3", "en", "0.1", "code"])
    assert b.prefixes == ("zh", "en", "code") and b.normalized_weights() == pytest.approx([0.6, 0.3, 0.1])
    assert parse_blend(["0.6 zh", "0.4 en"]).prefixes == ("zh", "en")
    assert parse_blend(["zh", "en"]).weights is None
    assert parse_blend("zh").prefixes == ("zh",)
    assert parse_blend([]) is None
    with pytest.raises(BlendError, match="odd count"):
        parse_blend("0.6 zh 0.4")
    with pytest.raises(BlendError, match="expected a weight before prefix"):
        parse_blend("zh 0.6 en 0.4")


def _blend_counts(prefixes, cache):
    cfg = load_config(None, [f"data.data_path=[0.6, {prefixes[0]}, 0.3, {prefixes[1]}, 0.1, {prefixes[2]}]",
                             f"data.data_cache_path={cache}", "data.split=100,0,0"])
    from megactllm.parallel import initialize_parallel

    initialize_parallel(cfg.parallel, 1)
    train, valid, _ = build_gpt_datasets(cfg.data, seq_length=32, seed=1234, sizes=(2000, 0, 0))
    ids = np.array([int(train[i]["dataset_id"]) for i in range(len(train))])
    # Each corpus uses its own id range: the tokens must come from the dataset the blend says.
    first = np.array([int(train[i]["tokens"][0]) for i in range(200)])
    ranges_ok = all((ids[i] == 0 and t < 170) or (ids[i] == 1 and 170 <= t < 340) or (ids[i] == 2 and t >= 340) or t == EOD
                    for i, t in enumerate(first))
    return np.bincount(ids, minlength=3).tolist(), len(train), valid is None, ranges_ok


def test_blend_proportions(tmp_path):
    prefixes = [write_corpus(str(tmp_path / name), seed=i, low=lo, high=hi)
                for i, (name, lo, hi) in enumerate([("zh", 3, 170), ("en", 170, 340), ("code", 340, VOCAB)])]
    (counts, n, no_valid, ranges_ok), = run_distributed(_blend_counts, 1, prefixes, str(tmp_path / "cache"), timeout=300)
    assert 2000 <= n <= 2010 and no_valid and ranges_ok  # megatron rounds each share up
    fractions = [c / n for c in counts]
    assert fractions == pytest.approx([0.6, 0.3, 0.1], abs=0.01), fractions
    assert any((tmp_path / "cache").rglob("*.npy")), "megatron's index cache is written to data.data_cache_path"


def test_eod_loss_mask_and_document_reset(tmp_path):
    prefix = write_corpus(str(tmp_path / "docs"), seed=3)
    cfg = load_config(None, [f"data.data_path=[{prefix}]", "data.split=100,0,0", "data.reset_attention_mask=true",
                             "data.reset_position_ids=true"])
    train, _, _ = build_gpt_datasets(cfg.data, seq_length=64, seed=1, sizes=(20, 0, 0))
    checked = 0
    for i in range(len(train)):
        item = train[i]
        tokens, mask, attn, pos = item["tokens"], item["loss_mask"], item["attention_mask"][0], item["position_ids"]
        eods = (tokens == EOD).nonzero().flatten().tolist()
        for e in eods:
            assert mask[e] == 0, "the token after an EOD (the next document's first) is not a target"
            if e + 1 < len(tokens):
                assert pos[e + 1] == 0, "positions restart after a document boundary"
                assert bool(attn[e + 1, e]), "the next document cannot attend across the boundary"
                checked += 1
        assert mask.sum() == len(tokens) - len(eods)
    assert checked > 5


def test_missing_prefix_and_empty_split_are_named(tmp_path):
    cfg = load_config(None, [f"data.data_path=[{tmp_path}/nope]"])
    with pytest.raises(DatasetFormatError, match="nope"):
        build_gpt_datasets(cfg.data, seq_length=32, seed=1, sizes=(10, 0, 0))
    prefix = write_corpus(str(tmp_path / "small"), seed=4, documents=20)
    cfg = load_config(None, [f"data.data_path=[{prefix}]", "data.split=99,1,0"])
    with pytest.raises(DatasetFormatError, match="valid split of .*small"):
        build_gpt_datasets(cfg.data, seq_length=32, seed=1, sizes=(10, 10, 0))


def test_microbatch_order_covers_the_global_batch_once():
    gbs, mbs, dp = 8, 2, 2
    per_rank = [microbatch_indices(16, gbs, mbs, r, dp) for r in range(dp)]
    flat = sorted(i for rank in per_rank for mb in rank for i in mb)
    assert flat == list(range(16, 24))
    assert per_rank[0] == [[16, 17], [20, 21]] and per_rank[1] == [[18, 19], [22, 23]]
