"""HF -> megactllm import: bit-exact round trips, vocabulary extension, continued pretraining, bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from convert_testing import (
    REPO_ROOT,
    continue_pretraining,
    extend_sentencepiece_proto,
    read_hf_weights,
    tiny_hf_llama,
    train_tiny_sentencepiece,
)

from megactllm.convert import (
    ConversionError,
    VocabMismatchError,
    export_to_hf,
    import_from_hf,
)
from megactllm.testing import run_distributed
from megactllm.tokenizer import load_tokenizer
from megactllm.checkpoint import read_metadata

VOCAB = 300


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    return train_tiny_sentencepiece(tmp_path_factory.mktemp("tok") / "tiny.model", VOCAB)


def _hf_dir(path: Path, tokenizer_file: Path, dtype=torch.float32, shard_size=None, **config) -> Path:
    model = tiny_hf_llama(VOCAB, **config).to(dtype)
    model.save_pretrained(path, max_shard_size=shard_size) if shard_size else model.save_pretrained(path)
    shutil.copy(tokenizer_file, path / "tokenizer.model")
    return path


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "convert_checkpoint.py"), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "dtype,config,via_cli",
    [
        (torch.float32, dict(num_key_value_heads=2, tie_word_embeddings=False, head_dim=32), False),
        (torch.bfloat16, dict(num_key_value_heads=4, tie_word_embeddings=True), True),
    ],
    ids=["fp32-gqa-untied-sharded", "bf16-mha-tied-cli"],
)
def test_hf_to_megactllm_to_hf_is_bit_exact(tmp_path, tokenizer_file, dtype, config, via_cli):
    source = _hf_dir(tmp_path / "hf_in", tokenizer_file, dtype, shard_size="100KB" if not via_cli else None, **config)
    if via_cli:
        done = _cli("import", str(source), str(tmp_path / "ckpt"), "--target-tp", "2", "--target-pp", "2")
        assert done.returncode == 0, done.stderr
        assert "checkpoint.pretrained=" in done.stderr and "[import]" in done.stderr  # progress shown
        done = _cli("export", str(tmp_path / "ckpt"), str(tmp_path / "hf_out"))
        assert done.returncode == 0, done.stderr
    else:
        imported = import_from_hf(source, tmp_path / "ckpt", progress_stream=None)
        assert imported.dtype == dtype
        export_to_hf(imported.checkpoint, tmp_path / "hf_out", progress_stream=None)

    before, after = read_hf_weights(source), read_hf_weights(tmp_path / "hf_out")
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert after[name].dtype == dtype and torch.equal(after[name], tensor), name
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings"]
    config_in = json.loads((source / "config.json").read_text())
    config_out = json.loads((tmp_path / "hf_out" / "config.json").read_text())
    assert {k: config_in[k] for k in keys} == {k: config_out[k] for k in keys}
    assert config_out["rope_parameters"]["rope_theta"] == config_in["rope_parameters"]["rope_theta"] == 500000.0


def test_vocabulary_extension_initialises_new_rows_from_old_subtokens(tmp_path, tokenizer_file):
    source = _hf_dir(tmp_path / "hf_in", tokenizer_file)
    # A word-initial piece and a mid-word piece (no dummy-prefix boundary may leak into its sub-tokens).
    new_pieces = [("\u2581pipelineparallel", "normal"), ("ocabul", "normal")]
    extended = extend_sentencepiece_proto(tokenizer_file, tmp_path / "extended.model", new_pieces)
    imported = import_from_hf(source, tmp_path / "ckpt", tokenizer_file=extended, progress_stream=None)
    assert imported.model_config.vocab_size == VOCAB + 2 and imported.extension.without_subtokens == 0
    assert read_metadata(imported.checkpoint).model_config.vocab_size == VOCAB + 2
    export_to_hf(imported.checkpoint, tmp_path / "hf_out", progress_stream=None)

    before, after = read_hf_weights(source), read_hf_weights(tmp_path / "hf_out")
    old = load_tokenizer("sentencepiece", str(tokenizer_file))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert after[name].shape == (VOCAB + 2, 64)
        assert torch.equal(after[name][:VOCAB], before[name][:VOCAB])
        for offset, (piece, _) in enumerate(new_pieces):
            ids = [old.token_to_id(p) for p in _old_pieces_spelling(old, piece)]
            expected = before[name][ids].mean(dim=0)
            assert torch.allclose(after[name][VOCAB + offset], expected, atol=1e-6), (name, piece)
    assert json.loads((tmp_path / "hf_out" / "config.json").read_text())["vocab_size"] == VOCAB + 2


def _old_pieces_spelling(old, piece: str) -> list[str]:
    """The old pieces that spell `piece` exactly (the test's independent view of the sub-tokens)."""
    pieces = old.sp.EncodeAsPieces(piece.replace("\u2581", " ").lstrip(" "))
    if not piece.startswith("\u2581"):  # strip SentencePiece's dummy prefix from the first piece
        first = pieces[0][1:]
        pieces = ([first] if first else []) + pieces[1:]
        if first and old.token_to_id(first) is None:
            pytest.skip(f"{first!r} is not a piece of the tiny tokenizer; pick another test piece")
    assert "".join(pieces) == piece
    return pieces


def test_extension_must_keep_old_ids(tmp_path, tokenizer_file):
    source = _hf_dir(tmp_path / "hf_in", tokenizer_file)
    from sentencepiece import sentencepiece_model_pb2

    other = extend_sentencepiece_proto(tokenizer_file, tmp_path / "other.model", [("\u2581xyz", "normal")])
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(other.read_bytes())
    proto.pieces[100].piece, proto.pieces[101].piece = proto.pieces[101].piece, proto.pieces[100].piece
    other.write_bytes(proto.SerializeToString())  # two old pieces swapped ids: not an extension
    with pytest.raises(VocabMismatchError, match=r"other\.model is not an extension of .*hf_in/tokenizer\.model: id 100"):
        import_from_hf(source, tmp_path / "ckpt", tokenizer_file=other, progress_stream=None)
    assert not (tmp_path / "ckpt").exists()


def test_continued_pretraining_starts_from_imported_weights(tmp_path, tokenizer_file):
    from megactllm.data.pretrain.indexed import IndexedDatasetWriter

    source = _hf_dir(tmp_path / "hf_in", tokenizer_file)
    imported = import_from_hf(source, tmp_path / "ckpt", progress_stream=None)
    tokenizer = load_tokenizer("sentencepiece", str(tokenizer_file))
    prefix = str(tmp_path / "data" / "docs")
    with IndexedDatasetWriter(prefix, vocab_size=VOCAB) as writer:
        for i in range(40):
            writer.add_document(np.array(tokenizer.encode(f"the model reads text {i} and learns") + [tokenizer.eod_id]))
    iteration, losses, saved = run_distributed(
        continue_pretraining, 1, str(imported.checkpoint), prefix, str(tokenizer_file), str(tmp_path / "run"), 16,
        timeout=300)[0]
    assert iteration == 1 and np.isfinite(list(losses.values())).all()  # fresh schedule: counted from 0
    meta = read_metadata(saved)
    assert meta.has_optimizer and meta.model_config.vocab_size == VOCAB
    # lr 0: the trained checkpoint still holds exactly the HF weights, so the loop started from them.
    export_to_hf(saved, tmp_path / "hf_out", progress_stream=None)
    before, after = read_hf_weights(source), read_hf_weights(tmp_path / "hf_out")
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_bad_hf_input_is_named(tmp_path, tokenizer_file):
    source = _hf_dir(tmp_path / "hf_in", tokenizer_file, shard_size="100KB")
    config = json.loads((source / "config.json").read_text())

    # Qwen2 converts now (megactllm.model.families); an architecture no family knows is refused by name.
    (source / "config.json").write_text(json.dumps({**config, "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"}))
    with pytest.raises(ConversionError, match=r"hf_in/config\.json: architecture .*GPTNeoXForCausalLM.* not supported"):
        import_from_hf(source, tmp_path / "out", progress_stream=None)
    (source / "config.json").write_text(json.dumps(config))

    shards = sorted(source.glob("model-*.safetensors"))
    data = shards[-1].read_bytes()
    shards[-1].write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=f"{shards[-1].name} is truncated"):
        import_from_hf(source, tmp_path / "out", progress_stream=None)
    shards[-1].unlink()
    done = _cli("import", str(source), str(tmp_path / "out"))
    assert done.returncode == 2 and f"safetensors shard {shards[-1]} is missing" in done.stderr
    assert not (tmp_path / "out").exists()


def test_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path, tokenizer_file):
    source = _hf_dir(tmp_path / "hf_in", tokenizer_file)
    smaller = train_tiny_sentencepiece(tmp_path / "smaller.model", VOCAB - 20)
    with pytest.raises(VocabMismatchError, match=r"smaller\.model has 280 ids but .*config\.json has a vocabulary of 300"):
        import_from_hf(source, tmp_path / "ckpt", tokenizer_file=smaller, progress_stream=None)

    imported = import_from_hf(source, tmp_path / "ckpt", progress_stream=None)
    with pytest.raises(VocabMismatchError, match=r"smaller\.model has 280 ids but checkpoint .* has a vocabulary of 300"):
        export_to_hf(imported.checkpoint, tmp_path / "hf_out", tokenizer_file=smaller, progress_stream=None)
    assert not (tmp_path / "hf_out").exists() and not list(tmp_path.glob("hf_out*"))
    # a --tokenizer path that is not there is named before the default chat template is looked for
    with pytest.raises(ConversionError, match=r"tokenizer file .*absent\.model is missing"):
        export_to_hf(imported.checkpoint, tmp_path / "hf_out", tokenizer_file=tmp_path / "absent.model", progress_stream=None)
    assert not list(tmp_path.glob("hf_out*"))


def test_corrupt_checkpoint_leaves_no_output(tmp_path, tokenizer_file):
    imported = import_from_hf(_hf_dir(tmp_path / "hf_in", tokenizer_file), tmp_path / "ckpt", progress_stream=None)
    for data_file in (imported.checkpoint / "model").glob("*.distcp"):
        data_file.write_bytes(data_file.read_bytes()[:1000])
    # the manifest names the cut files before anything is read
    with pytest.raises(ConversionError, match=r"ckpt/iter_0000000: model/__embedding_0.distcp is 1000 bytes, cut short"):
        export_to_hf(imported.checkpoint, tmp_path / "hf_out", progress_stream=None)
    assert not list(tmp_path.glob("hf_out*"))
    with pytest.raises(ConversionError, match="is not a megactllm checkpoint"):
        export_to_hf(tmp_path / "hf_in", tmp_path / "hf_out", progress_stream=None)


def test_export_directory_loads_offline_with_nothing_else(tmp_path, tokenizer_file, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from megactllm.tokenizer.chat_template import CHAT_TEMPLATE, IM_END, IM_START

    chat_tokenizer = extend_sentencepiece_proto(tokenizer_file, tmp_path / "chat.model",
                                                [(IM_START, "user_defined"), (IM_END, "user_defined")])
    imported = import_from_hf(_hf_dir(tmp_path / "hf_in", tokenizer_file), tmp_path / "ckpt",
                              tokenizer_file=chat_tokenizer, progress_stream=None)
    export_to_hf(imported.checkpoint, tmp_path / "exported", dtype="bf16", progress_stream=None)
    base_export = export_to_hf(read_metadata(tmp_path / "ckpt").path, tmp_path / "base", progress_stream=None,
                               tokenizer_file=chat_tokenizer, chat_template=None)
    assert not (base_export.out_dir / "chat_template.jinja").exists()

    moved = tmp_path / "elsewhere" / "model"  # nothing may point back at the checkpoint or tokenizer
    moved.parent.mkdir()
    (tmp_path / "exported").rename(moved)
    shutil.rmtree(tmp_path / "ckpt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    names = {p.name for p in moved.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer.model",
            "tokenizer_config.json"} <= names
    model = AutoModelForCausalLM.from_pretrained(moved, local_files_only=True)
    assert model.dtype == torch.bfloat16 and model.config.vocab_size == VOCAB + 2
    hf_tok = AutoTokenizer.from_pretrained(moved, local_files_only=True)
    ours = load_tokenizer("sentencepiece", str(chat_tokenizer))
    text = "the model reads tensor pipeline text and learns"
    assert hf_tok(text).input_ids == ours.encode(text)  # no BOS: as megactllm trains
    assert hf_tok.chat_template == CHAT_TEMPLATE
    assert GenerationConfig.from_pretrained(moved, local_files_only=True).eos_token_id == ours.eod_id == hf_tok.eos_token_id
