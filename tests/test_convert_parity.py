"""Logit parity across layouts, both directions.

Export: a random model saved at TP x PP = 1x1, 2x1, 1x2, 2x2 (by run_distributed), exported to HF,
gives our logits in transformers. Import: an HF model imported once loads at TP2 with HF's logits.
All layouts (plus an interleaved-pipeline one) run in one 4-process group (the rest of each layout
is data parallel).
"""
import json

import pytest
import torch
from convert_testing import (
    SEQ,
    hf_logits,
    layout_jobs,
    merge_rank_results,
    tiny_config,
    tiny_hf_llama,
    train_tiny_sentencepiece,
)

from megactllm.config import Config, ParallelConfig
from megactllm.convert import export_to_hf, import_from_hf
from megactllm.testing import run_distributed
from megactllm.checkpoint import read_metadata

VOCAB = 300  # padded to 384 at TP1 and 512 at TP2: export drops the padding, import adds it
# Non-default RoPE base and RMSNorm epsilon, so a value lost on the way shows in the logits.
COMMON = dict(rotary_base=500000.0, norm_epsilon=1e-6)
LAYOUTS = {
    "1x1-mha": (1, 1, dict()),
    "2x1-gqa": (2, 1, dict(num_query_groups=2)),
    "1x2-tied-headdim32": (1, 2, dict(tie_word_embeddings=True, kv_channels=32)),
    "2x2-gqa-tied": (2, 2, dict(num_query_groups=2, tie_word_embeddings=True)),
    # Interleaved pipeline: each rank holds layers 0 and 2 (or 1 and 3), so layer offsets must be global.
    "1x2-vpp2-gqa": (1, 2, dict(vpp=2, num_query_groups=1)),
}
TOLERANCE = 1e-4


def _tokens(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    tokenizer = train_tiny_sentencepiece(root / "tiny.model", VOCAB)

    hf_dir = root / "hf_in"
    tiny_hf_llama(VOCAB, tie_word_embeddings=False, head_dim=32).save_pretrained(hf_dir)
    (hf_dir / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    imported = import_from_hf(hf_dir, root / "imported", target_tp=2, progress_stream=None)

    jobs = []
    for i, (name, (tp, pp, shape)) in enumerate(LAYOUTS.items()):
        cfg = tiny_config(VOCAB, tp, pp, **COMMON, **shape)
        jobs.append(dict(name=name, cfg=cfg, save_to=str(root / name), tokenizer=str(tokenizer), tokens=_tokens(i)))
    at_tp2 = Config(model=read_metadata(imported.checkpoint).model_config, parallel=ParallelConfig(tensor_model_parallel_size=2))
    jobs.append(dict(name="imported@tp2", cfg=at_tp2, load_from=str(imported.checkpoint), tokens=_tokens(99)))
    logits = merge_rank_results(run_distributed(layout_jobs, 4, jobs, timeout=400))
    return dict(root=root, logits=logits, jobs={j["name"]: j for j in jobs}, hf_dir=hf_dir)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_exported_model_matches_our_forward(runs, name):
    job = runs["jobs"][name]
    ours = runs["logits"][name]
    assert ours.shape[-1] == job["cfg"].model.padded_vocab_size(job["cfg"].parallel.tensor_model_parallel_size)

    out = runs["root"] / f"hf-{name}"
    # Small shards, so transformers reads the sharded layout through its index.
    result = export_to_hf(job["save_to"], out, max_shard_bytes=64 * 1024, progress_stream=None)
    assert len(result.files) > 2 and (out / "model.safetensors.index.json").is_file()
    theirs = hf_logits(out, job["tokens"])
    diff = (ours[..., :VOCAB] - theirs).abs().max().item()
    print(f"export parity {name}: max |logit diff| = {diff:.3g}")
    assert theirs.shape[-1] == VOCAB and diff < TOLERANCE

    model = job["cfg"].model
    assert not (out / "chat_template.jinja").exists()  # the tiny tokenizer has no chat tokens
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] == model.tie_word_embeddings
    assert (config["num_key_value_heads"], config["head_dim"]) == (model.num_kv_heads, model.head_dim)


def test_imported_checkpoint_loads_at_tp2_with_hf_logits(runs):
    job = runs["jobs"]["imported@tp2"]
    ours = runs["logits"]["imported@tp2"]
    assert ours.shape[-1] == 512  # padded for TP2, though the import built the model at TP1 (384)
    theirs = hf_logits(runs["hf_dir"], job["tokens"])
    diff = (ours[..., :VOCAB] - theirs).abs().max().item()
    print(f"import parity at TP2: max |logit diff| = {diff:.3g}")
    assert diff < TOLERANCE
