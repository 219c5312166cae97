"""A padded vocabulary: an embedding with more rows than the tokenizer has ids.

The rows past the tokenizer's last id are padding (Megatron's make-vocab-size-divisible-by, Qwen2.5's
151,936 rows for 151,665 ids). Such a model trains, resumes with the same command (losses equal to
an uninterrupted run), loads at another TP, exports with its rows (HF config vocab_size = rows), is
imported back, becomes a GGUF llama.cpp loads, and is evaluated and served without a padding id
ever being scored or chosen, even when the padding rows' logits are made the largest. A wrong
tokenizer is still refused, by what it is.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch
from convert_testing import extend_sentencepiece_proto, read_hf_weights, tiny_hf_llama, train_tiny_sentencepiece
from entry_utils import save_checkpoint_with_tokenizer
from train_utils import EOD, tiny_overrides, write_corpus

from megactllm.config import ConfigError, load_config
from megactllm.testing import run_distributed

IDS, MULTIPLE, ROWS = 300, 64, 320  # a 300-id tokenizer; rows rounded up to a multiple of 64
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    return train_tiny_sentencepiece(tmp_path_factory.mktemp("tok") / "tiny.model", IDS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer) -> str:
    from megactllm.tokenizer import load_tokenizer

    assert load_tokenizer("sentencepiece", str(tokenizer)).eod_id == EOD
    prefix = write_corpus(str(tmp_path_factory.mktemp("data") / "padded"), seed=3, high=IDS)
    Path(prefix + ".json").write_text(json.dumps({"eod_id": EOD, "vocab_size": IDS}))
    return prefix


def _overrides(corpus, tokenizer, run_dir) -> list[str]:
    overrides = tiny_overrides(corpus, str(run_dir), **{
        "parallel.tensor_model_parallel_size": 2,
        "data.tokenizer_model": str(tokenizer),
        "train.duration": "4 iterations", "checkpoint.interval": 2,
        "checkpoint.save": f"{run_dir}/ckpt", "checkpoint.load": f"{run_dir}/ckpt",
    })
    # Megatron's option sets the rows from the tokenizer: no model.vocab_size on the command line.
    return [o for o in overrides if not o.startswith("model.vocab_size=")] + [
        f"model.make_vocab_size_divisible_by={MULTIPLE}"]


def _train(overrides):
    """Rank body: what megactllm.train does (the preflight, then the loop)."""
    import os

    from megactllm.parallel import initialize_parallel
    from megactllm.training.trainer import run_training
    from megactllm.training.run.preflight import preflight

    cfg = load_config(None, overrides)
    preflight(cfg, int(os.environ["WORLD_SIZE"]), check_memory=False)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    result = run_training(cfg)
    return {"losses": result.losses, "rows": cfg.model.vocab_size}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus, tokenizer):
    """An uninterrupted TP2 run of 4 iterations, and the same command resumed from its iteration 2."""
    root = tmp_path_factory.mktemp("padded_runs")
    reference = run_distributed(_train, 2, _overrides(corpus, tokenizer, root / "a"))[0]
    (root / "b" / "ckpt").mkdir(parents=True)
    shutil.copytree(root / "a" / "ckpt" / "iter_0000002", root / "b" / "ckpt" / "iter_0000002")
    (root / "b" / "ckpt" / "latest_checkpointed_iteration.txt").write_text("2")
    resumed = run_distributed(_train, 2, _overrides(corpus, tokenizer, root / "b"))[0]
    return {"reference": reference, "resumed": resumed, "checkpoint": root / "a" / "ckpt", "root": root}


def test_training_with_a_padded_vocabulary_resumes_with_the_same_losses(trained):
    ref, resumed = trained["reference"], trained["resumed"]
    assert ref["rows"] == resumed["rows"] == ROWS
    assert sorted(resumed["losses"]) == [3, 4]
    for it in (3, 4):
        assert abs(resumed["losses"][it] - ref["losses"][it]) <= 1e-6, (it, resumed["losses"], ref["losses"])


def test_a_wrong_tokenizer_is_still_refused_by_what_it_is(trained, tmp_path):
    from megactllm.checkpoint.shape import resolve_model_from_checkpoint
    from megactllm.errors import UserError

    def resolve(tok):
        return resolve_model_from_checkpoint(load_config(None, [f"checkpoint.load={trained['checkpoint']}",
                                                                f"data.tokenizer_model={tok}"]))

    own = trained["checkpoint"] / "iter_0000004" / "tokenizer" / "tiny.model"
    pieces = [(f"\u2581extra{i}", "normal") for i in range(ROWS + 1 - IDS)]
    larger = extend_sentencepiece_proto(own, tmp_path / "larger.model", pieces)  # more ids than rows
    with pytest.raises(UserError, match=rf"larger\.model has {ROWS + 1} ids but .* has a vocabulary of {ROWS}"):
        resolve(larger)
    other = _swap_pieces(own, tmp_path / "other.model", 100, 101)  # fits the rows, other pieces
    with pytest.raises(UserError, match=r"other\.model is not an extension of .*tokenizer/tiny\.model: id 100"):
        resolve(other)
    resolve(extend_sentencepiece_proto(own, tmp_path / "ext.model", pieces[:5]))  # an extension within the rows fits


def _identity_normalizer(model_file: Path) -> None:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    proto.normalizer_spec.name, proto.normalizer_spec.precompiled_charsmap = "identity", b""
    model_file.write_bytes(proto.SerializeToString())


def _swap_pieces(source: Path, target: Path, a: int, b: int) -> Path:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(source.read_bytes())
    proto.pieces[a].piece, proto.pieces[b].piece = proto.pieces[b].piece, proto.pieces[a].piece
    target.write_bytes(proto.SerializeToString())
    return target


def test_make_vocab_size_divisible_by_sets_the_rows_and_refuses_a_contradiction(corpus, tokenizer, tmp_path):
    from megactllm.training.run.preflight import preflight

    base = [f"data.data_path=[{corpus}]", f"data.tokenizer_model={tokenizer}", "model.arch=tiny", "train.duration=4 iterations"]
    cfg = load_config(None, base + [f"model.make_vocab_size_divisible_by={MULTIPLE}"])
    preflight(cfg, 1, check_memory=False)
    assert cfg.model.vocab_size == ROWS
    cfg = load_config(None, base)  # off by default: model.vocab_size as given (the arch's)
    arch_rows = cfg.model.vocab_size
    preflight(cfg, 1, check_memory=False)
    assert cfg.model.vocab_size == arch_rows
    with pytest.raises(ConfigError, match=rf"model.vocab_size={IDS} \(set by an override\) but "
                                          rf"model.make_vocab_size_divisible_by={MULTIPLE} makes the rows {ROWS}"):
        preflight(load_config(None, base + [f"model.vocab_size={IDS}", f"model.make_vocab_size_divisible_by={MULTIPLE}"]),
                  1, check_memory=False)


def test_a_checkpoint_of_the_previous_format_still_reads(trained, tmp_path):
    """Earlier megactllm wrote make_vocab_size_divisible_by=128 as its layout padding: it reads as unset."""
    from megactllm.checkpoint import read_metadata
    from megactllm.checkpoint.shape import resolve_model_from_checkpoint

    old = tmp_path / "old"
    shutil.copytree(trained["checkpoint"] / "iter_0000004", old)
    meta_file = old / "megactllm.json"
    raw = json.loads(meta_file.read_text())
    raw["model"]["make_vocab_size_divisible_by"] = 128
    raw["format_version"] = 1  # as the previous format's files say (no manifest, no callback states)
    raw.pop("manifest", None)
    raw.pop("callbacks", None)
    meta_file.write_text(json.dumps(raw))
    assert read_metadata(old).model_config.make_vocab_size_divisible_by is None
    cfg = load_config(None, [f"checkpoint.pretrained={old}"])
    resolve_model_from_checkpoint(cfg)
    assert cfg.model.vocab_size == ROWS and cfg.data.tokenizer_model.endswith("tokenizer/tiny.model")


def _padding_rows_win(output_layer, hidden: torch.Tensor) -> None:
    """Make every padding row's logit for `hidden` far larger than any real one."""
    with torch.no_grad():
        output_layer.weight[IDS:ROWS] = 1000 * hidden / hidden.norm()


def _parallel_eval(checkpoint, tokenizer_file, context):
    """Rank body at TP1 (the checkpoint is TP2): the parallel backend scores and picks real ids only."""
    from megactllm.config import ParallelConfig
    from megactllm.eval.backends.parallel import ParallelBackend
    from megactllm.eval.requests import TokenRequest
    from megactllm.parallel import initialize_parallel

    initialize_parallel(ParallelConfig(), seed=1, num_layers=4)
    backend = ParallelBackend.from_checkpoint(checkpoint, ParallelConfig(), batch_size=1)
    output_layer = backend.chunks[0].output_layer
    seen = {}
    output_layer.register_forward_hook(lambda m, args, out: seen.update(hidden=args[0], logits=out[0]))
    backend.greedy_generate([context], 1)
    before = seen["logits"][-1, 0].float()
    best = int(before[:IDS].argmax())
    _padding_rows_win(output_layer, seen["hidden"][-1, 0].float())
    backend.greedy_generate([context], 1)
    raw = seen["logits"][-1, 0].float()  # before the backend's mask: a padding row is the largest
    (ll, greedy), = backend.loglikelihood([TokenRequest(tuple(context), (best,))])
    text = backend.greedy_generate([context], 1)[0]
    expected_ll = float(torch.log_softmax(raw[:IDS].double(), -1)[best])
    return {"raw_argmax": int(raw[:ROWS].argmax()), "best": best, "greedy": greedy, "ll": ll,
            "expected_ll": expected_ll, "text": text, "best_text": backend.decode([best])}


def test_evaluation_at_another_tp_never_scores_or_picks_a_padding_id(trained):
    from megactllm.tokenizer import load_tokenizer

    checkpoint = trained["checkpoint"] / "iter_0000004"
    tok_file = checkpoint / "tokenizer" / "tiny.model"
    context = load_tokenizer("sentencepiece", str(tok_file)).encode("the model reads text and learns")
    out = run_distributed(_parallel_eval, 1, str(checkpoint), str(tok_file), context)[0]
    assert IDS <= out["raw_argmax"] < ROWS  # unmasked, a padding row would win
    assert out["greedy"] and out["text"] == out["best_text"]
    assert abs(out["ll"] - out["expected_ll"]) < 1e-4


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    from megactllm.convert import export_to_hf

    out = tmp_path_factory.mktemp("hf") / "padded"
    export_to_hf(trained["checkpoint"], out, progress_stream=None)
    return out


def test_export_keeps_the_padding_rows_and_loads_in_transformers(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((exported / "config.json").read_text())
    assert config["vocab_size"] == ROWS
    model = AutoModelForCausalLM.from_pretrained(str(exported), local_files_only=True)
    assert model.get_input_embeddings().weight.shape[0] == ROWS and model.lm_head.weight.shape[0] == ROWS
    assert len(AutoTokenizer.from_pretrained(str(exported), local_files_only=True)) == IDS


def test_hf_evaluation_and_serving_never_pick_a_padding_id(exported):
    from megactllm.eval.backends.hf import HFBackend
    from megactllm.eval.requests import TokenRequest
    from megactllm.serve.engine import Halt, SamplingParams
    from megactllm.serve.hf_engine import TransformersEngine

    backend = HFBackend(exported, batch_size=1)
    context = backend.encode("the model reads text and learns")
    with torch.no_grad():
        out = backend.model(torch.tensor([context]), output_hidden_states=True)
    best = int(out.logits[0, -1, :IDS].argmax())
    _padding_rows_win(backend.model.lm_head, out.hidden_states[-1][0, -1])
    with torch.no_grad():
        raw = backend.model(torch.tensor([context])).logits[0, -1].double()
    assert IDS <= int(raw.argmax()) < ROWS  # unmasked, transformers itself picks a padding row
    (ll, greedy), = backend.loglikelihood([TokenRequest(tuple(context), (best,))])
    assert greedy and abs(ll - float(torch.log_softmax(raw[:IDS], -1)[best])) < 1e-4
    assert backend.greedy_generate([context], 1) == [backend.decode([best])]

    engine = TransformersEngine(exported)
    engine.model.lm_head.weight.data.copy_(backend.model.lm_head.weight.data)
    done = engine.complete(list(context), SamplingParams(max_tokens=1, temperature=0.0))
    assert done.text == engine.tokenizer.decode([best], skip_special_tokens=True)
    with torch.no_grad():  # sampling too: the engine's own generate arguments suppress the padding rows
        ids = engine.model.generate(**engine._generate_kwargs(list(context), SamplingParams(max_tokens=8, temperature=1.0, seed=1),
                                                              Halt()))
    assert ids.shape[1] > len(context) and int(ids[0, len(context):].max()) < IDS


def test_gguf_of_a_padded_model_loads_in_llama_cpp_and_never_samples_padding(exported, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[serve]')")
    from megactllm.convert.gguf import export_gguf
    from megactllm.serve.engine import SamplingParams
    from megactllm.serve.llama_engine import LlamaCppEngine

    assert llama_cpp
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(exported), local_files_only=True)
    hf = tmp_path / "hf"
    model.save_pretrained(hf)
    for f in exported.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, hf / f.name)
    _identity_normalizer(hf / "tokenizer.model")  # llama.cpp does not normalize; the test text is ASCII
    plain = export_gguf(hf, tmp_path / "plain.gguf", "f32", progress_stream=None).path
    prompt = LlamaCppEngine(plain, n_ctx=64).tokenize("the model reads text")
    with torch.no_grad():  # padding rows that win at the prompt's last position
        out = model(torch.tensor([prompt]), output_hidden_states=True)
        _padding_rows_win(model.lm_head, out.hidden_states[-1][0, -1])
        assert IDS <= int(model(torch.tensor([prompt])).logits[0, -1].argmax()) < ROWS
    model.save_pretrained(hf)
    gguf = export_gguf(hf, tmp_path / "padded.gguf", "f32", overwrite=True, progress_stream=None).path
    engine = LlamaCppEngine(gguf, n_ctx=64)
    assert engine.llm.n_vocab() == ROWS and engine.padding_start == IDS
    done = engine.complete(prompt, SamplingParams(max_tokens=1, temperature=0.0))
    sampled = engine.complete(prompt, SamplingParams(max_tokens=1, temperature=1.0, seed=3))
    for text in (done.text, sampled.text):
        assert done.completion_tokens == 1 and "[PAD" not in text


def test_import_of_an_hf_model_with_padding_rows_round_trips(tmp_path, tokenizer):
    from megactllm.checkpoint import read_metadata
    from megactllm.convert import export_to_hf, import_from_hf

    hf = tmp_path / "hf_in"
    tiny_hf_llama(ROWS).save_pretrained(hf)  # 320 rows for the 300 ids of its tokenizer
    shutil.copy(tokenizer, hf / "tokenizer.model")
    imported = import_from_hf(hf, tmp_path / "ckpt", progress_stream=None)
    assert read_metadata(imported.checkpoint).model_config.vocab_size == ROWS
    export_to_hf(imported.checkpoint, tmp_path / "hf_out", progress_stream=None)
    assert json.loads((tmp_path / "hf_out" / "config.json").read_text())["vocab_size"] == ROWS
    before, after = read_hf_weights(hf), read_hf_weights(tmp_path / "hf_out")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(before[name], after[name])


def test_tiny_cpu_recipe_resumes_and_exports_with_the_map_neo_tokenizer(tmp_path, shared_data):
    """The issue's case: model.vocab_size 64002 (tiny_cpu.yaml) with MAP-NEO's 64,000 ids."""
    from megactllm.checkpoint.shape import resolve_model_from_checkpoint
    from megactllm.convert import export_to_hf

    map_neo = shared_data / "tokenizers" / "map_neo_sp.model"
    recipe = str(REPO_ROOT / "examples" / "configs" / "tiny_cpu.yaml")
    run = tmp_path / "run"
    run_distributed(save_checkpoint_with_tokenizer, 1, ["model.arch=tiny", "model.vocab_size=64002"], str(run), str(map_neo))
    cfg = load_config(recipe, [f"data.tokenizer_model={map_neo}", f"checkpoint.load={run}"])
    assert resolve_model_from_checkpoint(cfg) and cfg.model.vocab_size == 64002
    export_to_hf(run, tmp_path / "hf", progress_stream=None)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == 64002
