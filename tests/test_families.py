"""Model families (Llama-3.x, Qwen2.5, Qwen3, Mistral) in and out of megactllm.

The round trip: a tiny random HF model of each family (made by transformers, with random biases
and norms) is imported, loaded at TP2 x PP2 (its logits must equal transformers' own class), saved
again at that layout and exported: every HF tensor must come back bit-identical.
"""
import json

import pytest
import torch
from convert_testing import SEQ, hf_logits, merge_rank_results, read_hf_weights, train_tiny_sentencepiece
from family_testing import FAMILY_MODELS, hf_config, load_logits_and_resave, tiny_hf_model

from megactllm.checkpoint import read_metadata
from megactllm.config import Config, ModelConfig, OptimConfig, ParallelConfig
from megactllm.convert import export_to_hf, import_from_hf
from megactllm.convert.errors import ConversionError
from megactllm.convert.hf_config import hf_config_from_model, model_config_from_hf
from megactllm.model.families import FAMILIES, ModelFamilyError, family_of
from megactllm.testing import run_distributed

VOCAB = 300
TOLERANCE = 1e-4
EXPECTED_FAMILY = {"llama3": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "mistral"}


def _hf_dict(family: str, **overrides) -> dict:
    config = hf_config(family, VOCAB, **overrides)
    values = config.to_dict()
    values["architectures"] = [FAMILY_MODELS[family][1]]
    return values


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_hf_config_maps_both_ways(family):
    model = model_config_from_hf(_hf_dict(family), "config.json")
    assert model.family == EXPECTED_FAMILY[family]
    assert model.add_qkv_bias == (family == "qwen2") and model.qk_layernorm == (family == "qwen3")
    assert model_config_from_hf(hf_config_from_model(model, torch.float32), "exported/config.json") == model
    if family == "llama3":
        assert (model.rope_scaling, model.rope_scaling_factor) == ("llama3", 32.0)
    if family == "qwen3":
        assert model.head_dim == 128 != model.hidden_size // model.num_attention_heads


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_parameter_count_equals_transformers(family):
    hf = tiny_hf_model(family, VOCAB)
    model = model_config_from_hf(_hf_dict(family), "config.json")
    assert family_of(model).num_parameters(model) == sum(p.numel() for p in hf.parameters())


def test_old_metadata_without_family_fields_is_llama():
    from megactllm.config import model_config_from_dict

    model = model_config_from_dict(dict(num_layers=2, hidden_size=64), "old megactllm.json")
    assert (model.family, model.add_qkv_bias, model.qk_layernorm, model.rope_scaling) == ("llama", False, False, None)
    assert family_of(model) is FAMILIES["llama"]


def test_bad_input_is_refused_by_name():
    unknown = {**_hf_dict("qwen2"), "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"}
    with pytest.raises(ConversionError, match=r"config.json: architecture \['GPTNeoXForCausalLM'\].*not supported"):
        model_config_from_hf(unknown, "config.json")
    odd_rope = _hf_dict("llama3")
    for key in ("rope_scaling", "rope_parameters"):
        if odd_rope.get(key):
            odd_rope[key] = {**odd_rope[key], "low_freq_factor": 2.0}
    with pytest.raises(ConversionError, match="config.json: RoPE scaling 'llama3' with low_freq_factor=2.0 is not supported"):
        model_config_from_hf(odd_rope, "config.json")
    with pytest.raises(ConversionError, match="RoPE scaling 'yarn' is not supported"):
        model_config_from_hf({**_hf_dict("qwen2"), "rope_scaling": {"type": "yarn", "factor": 4.0},
                              "rope_parameters": None}, "config.json")
    with pytest.raises(ConversionError, match="use_sliding_window=True is not supported"):
        model_config_from_hf({**_hf_dict("qwen2"), "use_sliding_window": True}, "config.json")

    # Mistral v0.1: a 4096-token window. Import clips the sequence to it; a longer run is refused.
    mistral = model_config_from_hf(_hf_dict("mistral", sliding_window=32), "config.json")
    assert mistral.sliding_window == 32 and mistral.seq_length == 32
    from megactllm.model import build_transformer_config

    long_run = ModelConfig(**{**mistral.__dict__, "seq_length": 64})
    with pytest.raises(ModelFamilyError, match="sliding_window=32 is shorter than the sequence length 64"):
        build_transformer_config(long_run, ParallelConfig(), OptimConfig())


def test_llama3_rope_scaling_equals_transformers_past_the_original_length():
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = hf_config("llama3", VOCAB, max_position_embeddings=131072)
    model = model_config_from_hf(_hf_dict("llama3", max_position_embeddings=131072), "config.json")
    kwargs = family_of(model).gpt_model_kwargs(model)
    ours = RotaryEmbedding(model.head_dim, 1.0, rotary_base=kwargs["rotary_base"], rope_scaling=kwargs["rope_scaling"],
                           rope_scaling_factor=kwargs["rope_scaling_factor"], use_cpu_initialization=True)
    theirs = LlamaRotaryEmbedding(config)
    positions = torch.tensor([[0, 1, 5000, 8191, 8192, 9000, 20000, 65536, 131071]])
    cos, sin = theirs(torch.zeros(1, dtype=torch.float32), positions)
    freqs = positions[0, :, None].float() * ours.inv_freq[None, :]
    half = model.head_dim // 2
    assert torch.allclose(ours.inv_freq, theirs.inv_freq, rtol=0, atol=0)
    assert torch.allclose(torch.cos(freqs), cos[0, :, :half], atol=1e-6)
    assert torch.allclose(torch.sin(freqs), sin[0, :, :half], atol=1e-6)
    plain = RotaryEmbedding(model.head_dim, 1.0, rotary_base=kwargs["rotary_base"], use_cpu_initialization=True)
    assert not torch.equal(plain.inv_freq, ours.inv_freq)  # the scaling does change the frequencies


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    tokenizer = train_tiny_sentencepiece(root / "tiny.model", VOCAB)
    jobs, originals = [], {}
    for i, family in enumerate(FAMILY_MODELS):
        hf_dir = root / f"hf-{family}"
        tiny_hf_model(family, VOCAB, seed=i).save_pretrained(hf_dir)
        (hf_dir / "tokenizer.model").write_bytes(tokenizer.read_bytes())
        imported = import_from_hf(hf_dir, root / f"imported-{family}", target_tp=2, target_pp=2, progress_stream=None)
        cfg = Config(model=read_metadata(imported.checkpoint).model_config,
                     parallel=ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2))
        tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(i))
        jobs.append(dict(name=family, cfg=cfg, load_from=str(imported.checkpoint), save_to=str(root / f"tp2pp2-{family}"),
                         tokenizer=str(tokenizer), tokens=tokens))
        originals[family] = hf_dir
    logits = merge_rank_results(run_distributed(load_logits_and_resave, 4, jobs, timeout=600))
    return dict(root=root, logits=logits, jobs={j["name"]: j for j in jobs}, originals=originals)


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_logits_at_tp2_pp2_equal_transformers(round_trip, family):
    job = round_trip["jobs"][family]
    ours = round_trip["logits"][family][..., :VOCAB]
    theirs = hf_logits(round_trip["originals"][family], job["tokens"])
    diff = (ours - theirs).abs().max().item()
    print(f"{family}: max |logit diff| megactllm TP2xPP2 vs transformers = {diff:.3g}")
    assert diff < TOLERANCE


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_export_after_tp2_pp2_gives_every_tensor_back(round_trip, family):
    out = round_trip["root"] / f"exported-{family}"
    export_to_hf(round_trip["jobs"][family]["save_to"], out, progress_stream=None)
    original = read_hf_weights(round_trip["originals"][family])
    exported = read_hf_weights(out)
    assert sorted(exported) == sorted(original)
    different = [name for name in original if not torch.equal(original[name], exported[name])]
    assert not different, f"{family}: {different[:5]} differ"
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [FAMILY_MODELS[family][1]]


def test_named_shapes_count_the_published_parameters():
    from megactllm.config import get_architecture

    # Hugging Face's safetensors totals of Qwen2.5-7B and Llama-3.1-8B.
    for arch, published in (("qwen2.5-7b", 7_615_616_512), ("llama3.1-8b", 8_030_261_248)):
        model = get_architecture(arch)
        assert family_of(model).num_parameters(model) == published


@pytest.mark.parametrize("recipe,arch", [("qwen2.5_7b_continue", "qwen2.5-7b"), ("llama3.1_8b_continue", "llama3.1-8b")])
def test_recipe_layout_is_the_least_model_parallelism_that_fits_80gb(recipe, arch):
    """The recipes' TP/PP come from the memory estimate on 8 GPUs (what --dry-run prints)."""
    import dataclasses

    from convert_testing import REPO_ROOT

    from megactllm.config import load_config
    from megactllm.training.run.memory_estimate import GIB, estimate_memory
    from megactllm.training.run.preflight import preflight

    overrides = [f"model.arch={arch}", "checkpoint.pretrained=null", "checkpoint.load=null"]
    cfg = load_config(str(REPO_ROOT / "examples" / "configs" / f"{recipe}.yaml"), overrides)
    plan = preflight(cfg, 8, check_memory=False, raise_if_unfit=False)
    assert plan.estimate.total < 70 * GIB  # 80 GB GPUs, with room for what the estimate leaves out
    tp = cfg.parallel.tensor_model_parallel_size
    less = dataclasses.replace(cfg, parallel=dataclasses.replace(
        cfg.parallel, tensor_model_parallel_size=tp // 2, sequence_parallel=tp // 2 > 1))  # SP needs TP > 1
    assert estimate_memory(less, 8).total > 70 * GIB
