"""The run's shape comes from its checkpoint; the memory estimate; both checked before anything is built.

A real checkpoint (the tiny architecture with the MAP-NEO tokenizer's 64,000 pieces, saved by
megactllm's own save_checkpoint with a copy of the tokenizer) is the starting point. The memory
estimate is compared with the measured peak of real training steps in a fresh process.
"""
import json
import os
import subprocess
import sys

import pytest
from entry_utils import save_checkpoint_with_tokenizer
from train_utils import write_corpus

from megactllm.config import load_config
from megactllm.convert.errors import VocabMismatchError
from megactllm.errors import MemoryFitError, ModelShapeError
from megactllm.testing.distributed import run_distributed
from megactllm.training.run.memory_estimate import GIB, Available, check_fits, estimate_memory
from megactllm.checkpoint.shape import resolve_model_from_checkpoint

SAVED = ["model.arch=tiny", "model.vocab_size=64000", "model.seq_length=32", "model.max_position_embeddings=32",
         "model.norm_epsilon=1e-6"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, sp_model_path):
    path = tmp_path_factory.mktemp("ckpt") / "run"
    run_distributed(save_checkpoint_with_tokenizer, 1, SAVED, str(path), str(sp_model_path), timeout=300)
    return path


def _resolve(checkpoint, *overrides):
    cfg = load_config(None, [f"checkpoint.pretrained={checkpoint}", *overrides])
    resolve_model_from_checkpoint(cfg)
    return cfg


def test_model_section_and_tokenizer_come_from_the_checkpoint(checkpoint):
    cfg = _resolve(checkpoint)
    m = cfg.model
    assert (m.arch, m.num_layers, m.hidden_size, m.vocab_size, m.seq_length, m.norm_epsilon) == (
        "tiny", 4, 64, 64000, 32, 1e-6)
    assert cfg.data.tokenizer_model == str(checkpoint / "iter_0000000" / "tokenizer" / "map_neo_sp.model")
    # A run may choose its own sequence length; the checkpoint's shape stays.
    cfg = _resolve(checkpoint, "model.seq_length=16", "model.num_layers=4")
    assert (cfg.model.seq_length, cfg.model.num_layers, cfg.model.norm_epsilon) == (16, 4, 1e-6)


def test_a_contradicting_value_is_refused_naming_both(checkpoint):
    with pytest.raises(ModelShapeError) as err:
        _resolve(checkpoint, "model.num_layers=2")
    assert "model.num_layers=2 (set by an override)" in str(err.value) and "has 4" in str(err.value)
    # A named architecture sets every shape field: each contradiction is listed.
    with pytest.raises(ModelShapeError) as err:
        _resolve(checkpoint, "model.arch=llama2-7b")
    text = str(err.value)
    assert "model.num_layers=32 (set by model.arch=llama2-7b)" in text and "model.hidden_size=4096" in text
    assert "model.norm_epsilon" in text  # 1e-5 in llama2-7b, 1e-6 in the checkpoint


def test_a_tokenizer_that_does_not_fit_is_refused_by_name(checkpoint, shared_data):
    other = shared_data / "tokenizers" / "cluecorpussmall_sp.model"
    with pytest.raises(VocabMismatchError) as err:
        _resolve(checkpoint, f"data.tokenizer_model={other}")
    assert str(other) in str(err.value) and "64000" in str(err.value)


def test_memory_refusal_names_needed_available_and_knobs():
    cfg = load_config(None, ["model.arch=llama2-7b", "optim.bf16=true", "train.micro_batch_size=1"])
    # Without recompute, LLaMA-2-7B's activations at 4,096 tokens alone exceed 80 GiB on one device
    # (Korthikanti: sbh(34 + 5as/h) bytes per layer): no single knob is enough.
    with pytest.raises(MemoryFitError, match="no single change"):
        check_fits(cfg, 8, Available(80 * GIB, "GPU 0 (80.0 GiB free)", 1))
    cfg.parallel.recompute_granularity = "selective"
    est = estimate_memory(cfg, 8)
    # LLaMA-2-7B: 6.7B parameters; bf16 weights + fp32 grads + Adam with fp32 master = 18 bytes each.
    assert 6.6e9 < est.params_per_rank < 6.8e9
    assert abs(est.weights + est.gradients + est.optimizer - 18 * est.params_per_rank) < 1e6
    with pytest.raises(MemoryFitError) as err:
        check_fits(cfg, 8, Available(94 * GIB, "GPU 0 (94.0 GiB free)", 1))
    text = str(err.value)
    assert f"needs {est.total / GIB:.2f} GiB per rank" in text and "GPU 0 (94.0 GiB free)" in text
    # 8-way DP shards 12 of the 18 bytes; TP=2 halves nearly everything.
    assert "would fit with parallel.use_distributed_optimizer=true" in text
    assert "parallel.tensor_model_parallel_size=2" in text and "micro_batch_size" not in text
    # The distributed optimizer over DP=8 divides the optimizer state by 8.
    cfg.parallel.use_distributed_optimizer = True
    assert estimate_memory(cfg, 8).optimizer * 8 == pytest.approx(est.optimizer, rel=1e-6)
    check_fits(cfg, 8, Available(94 * GIB, "GPU 0", 1))


def test_estimate_within_25_percent_of_measured_peak(tmp_path):
    """Real training steps of the tiny model (MAP-NEO-sized vocabulary) in a fresh process."""
    prefix = write_corpus(str(tmp_path / "corpus"), seed=0, documents=400, high=64000)
    overrides = ["model.arch=tiny", "model.vocab_size=64000", f"data.data_path=[{prefix}]", "data.split=95,5,0",
                 f"data.data_cache_path={tmp_path}/cache", "train.micro_batch_size=4", "train.global_batch_size=8",
                 "train.duration=2 iterations", "validation.iters=0"]
    out = subprocess.run([sys.executable, "-m", "megactllm.testing.memory_probe", "--iters", "2", *overrides],
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = r["estimate_bytes"] / r["measured_bytes"]
    assert 0.75 <= ratio <= 1.25, r


def test_llama_recipe_continues_an_imported_llama_without_model_overrides(tmp_path):
    """The README's continued-pretraining route: import (with an extended vocabulary), then the
    LLaMA-2 recipe with nothing but checkpoint.pretrained."""
    import shutil

    from convert_testing import REPO_ROOT, extend_sentencepiece_proto, tiny_hf_llama, train_tiny_sentencepiece

    from megactllm.convert import import_from_hf
    from megactllm.training.run.preflight import preflight

    base = train_tiny_sentencepiece(tmp_path / "tiny.model", 300)
    hf = tmp_path / "hf"
    tiny_hf_llama(300).save_pretrained(hf)
    shutil.copy(base, hf / "tokenizer.model")
    extended = extend_sentencepiece_proto(base, tmp_path / "zh_extended.model", [("\u2581pipelineparallel", "normal")])
    imported = import_from_hf(hf, tmp_path / "ckpt", tokenizer_file=extended, progress_stream=None)

    recipe = str(REPO_ROOT / "examples" / "configs" / "llama2_7b_continue.yaml")
    # One's own data: the recipe's schedule is sized for 4,096-token samples, this model has 64.
    own_data = "data.data_path=[zh_text_document]"
    cfg = load_config(recipe, [f"checkpoint.pretrained={tmp_path / 'ckpt'}", f"checkpoint.load={tmp_path / 'none'}", own_data])
    plan = preflight(cfg, world_size=4)
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.num_kv_heads, m.vocab_size, m.rotary_base, m.norm_epsilon) == (
        2, 64, 2, 301, 500000.0, 1e-6)
    assert m == imported.model_config
    assert cfg.data.tokenizer_model.endswith("tokenizer/zh_extended.model") and plan.fits
    assert "from " + str(imported.checkpoint) in plan.report() and "TP 2 x PP 2" in plan.report()
    # The original tokenizer (one id short) does not fit the extended checkpoint: refused by name.
    with pytest.raises(VocabMismatchError, match="tiny.model has 300 ids"):
        preflight(load_config(recipe, [f"checkpoint.pretrained={tmp_path / 'ckpt'}",
                                       f"checkpoint.load={tmp_path / 'none'}", f"data.tokenizer_model={base}", own_data]), 4)
