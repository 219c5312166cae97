"""Mixture of experts (qwen3_moe, qwen2_moe): the CPU shims megatron-core's MoE layers need, the
families' HF config and weights both ways, parity with transformers at (TP, EP, PP) layouts.

Tiny models made by transformers itself (random biases, norms and router weights): imported,
loaded at (1,1,1), (1,2,1), (2,2,1) with sequence parallelism and (1,2,2), with both token
dispatchers; logits within 1e-4 of transformers' fp32 ones and the same top-k experts for every
token; saved again at a layout and exported, every HF tensor comes back bit-identical.
"""
import json

import pytest
import torch
from convert_testing import SEQ, hf_logits, merge_rank_results, read_hf_weights, train_tiny_sentencepiece
from moe_testing import EXPECTED_FAMILY, MOE_MODELS, hf_topk, layout_logits, moe_hf_config, tiny_moe_model

from megactllm.checkpoint import read_metadata
from megactllm.config import Config, ModelConfig, OptimConfig, ParallelConfig
from megactllm.convert import export_to_hf, import_from_hf
from megactllm.convert.errors import ConversionError
from megactllm.convert.hf_config import hf_config_from_model, model_config_from_hf
from megactllm.model.families import ModelFamilyError, family_of
from megactllm.testing import run_distributed

VOCAB = 300
TOLERANCE = 1e-4


def _hf_dict(family: str, **overrides) -> dict:
    values = moe_hf_config(family, VOCAB, **overrides).to_dict()
    values["architectures"] = [MOE_MODELS[family][1]]
    return values


# --- the CPU shims (megactllm/parallel/cpu_compat.py) --------------------------------------------

def test_router_runs_without_transformer_engine():
    """moe_te_general_gemm_shim: the router's linear takes its torch path (NameError without it)."""
    from megatron.core.transformer.moe import moe_utils

    from megactllm.parallel.cpu_compat import moe_te_general_gemm_shim

    moe_te_general_gemm_shim()
    assert moe_utils.te_general_gemm is None or torch.cuda.is_available()
    x = torch.randn(5, 8, requires_grad=True)
    w = torch.randn(4, 8, requires_grad=True)
    out = moe_utils.router_gating_linear(x, w, None, torch.float32)
    out.sum().backward()
    assert torch.allclose(out, x @ w.t()) and torch.allclose(w.grad, torch.ones(5, 4).t() @ x)


def test_custom_backward_runs_under_the_cpu_mode():
    """custom_backward_under_mode_shim: a Function's backward that allocates on the CUDA device (as
    megatron's expert all-to-all does) gets the CPU, as its forward does."""
    from megactllm.parallel import enable_cpu_compat

    if not enable_cpu_compat():
        pytest.skip("CUDA present: the CPU mode is off")

    class AllocatesOnCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.new_empty(x.shape, device=torch.cuda.current_device()).copy_(x) * 2

        @staticmethod
        def backward(ctx, grad):
            return grad.new_empty(grad.shape, device=torch.cuda.current_device()).copy_(grad) * 2

    x = torch.ones(3, requires_grad=True)
    AllocatesOnCuda.apply(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))


def _uneven_all_to_all():
    import torch.distributed as dist

    from megactllm.config import ParallelConfig
    from megactllm.parallel import destroy_parallel, initialize_parallel

    initialize_parallel(ParallelConfig())
    rank = dist.get_rank()
    send = torch.tensor([1, 2]) if rank == 0 else torch.tensor([3, 1])  # rows to rank 0, rank 1
    recv = torch.tensor([1, 3]) if rank == 0 else torch.tensor([2, 1])
    data = torch.arange(int(send.sum()), dtype=torch.float32) + 10 * rank
    out = torch.empty(int(recv.sum()))
    dist.all_to_all_single(out, data, output_split_sizes=recv, input_split_sizes=send)
    destroy_parallel()
    return out.tolist()


def test_gloo_all_to_all_takes_split_sizes_as_tensors():
    """gloo_all_to_all_split_sizes_shim: the alltoall dispatcher's uneven splits arrive as tensors."""
    assert run_distributed(_uneven_all_to_all, 2, timeout=300) == [[0.0, 10.0, 11.0, 12.0], [1.0, 2.0, 13.0]]


# --- the families -----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(MOE_MODELS))
def test_hf_config_maps_both_ways(family):
    model = model_config_from_hf(_hf_dict(family), "config.json")
    assert model.family == EXPECTED_FAMILY[family] and model.num_moe_experts == 8
    assert model_config_from_hf(hf_config_from_model(model, torch.float32), "exported/config.json") == model
    if family == "qwen3_moe":
        assert model.moe_layer_pattern == [0, 1] and model.moe_norm_topk_prob and model.qk_layernorm
        assert model.moe_shared_expert_intermediate_size is None
    else:
        assert model.moe_layer_pattern is None and not model.moe_norm_topk_prob and model.add_qkv_bias
        assert (model.moe_shared_expert_intermediate_size, model.moe_shared_expert_gate) == (48, True)
    sparse_step = model_config_from_hf(_hf_dict(family, decoder_sparse_step=2, mlp_only_layers=[]), "config.json")
    assert sparse_step.moe_layer_pattern == [0, 1]  # HF: layer i is sparse when (i + 1) % step == 0


@pytest.mark.parametrize("family", list(MOE_MODELS))
def test_parameter_counts_equal_transformers(family):
    hf = tiny_moe_model(family, VOCAB)
    model = model_config_from_hf(_hf_dict(family), "config.json")
    fam = family_of(model)
    assert fam.num_parameters(model) == sum(p.numel() for p in hf.parameters())
    # Active: one token uses k of the E experts of each MoE layer.
    unused = sum(model.moe_layers()) * (model.num_moe_experts - model.moe_router_topk) * 3 * 64 * 32
    assert fam.num_active_parameters(model) == fam.num_parameters(model) - unused
    assert fam.flops_per_token(model) < family_of(model).flops_per_token(
        ModelConfig(**{**model.__dict__, "moe_router_topk": model.num_moe_experts}))


def test_bad_input_is_refused_by_name():
    from megactllm.model import build_transformer_config
    from megactllm.config import ConfigError

    with pytest.raises(ConversionError, match="config.json: scoring_func='sigmoid' is not supported for Qwen3MoeForCausalLM"):
        model_config_from_hf(_hf_dict("qwen3_moe", scoring_func="sigmoid"), "config.json")
    with pytest.raises(ConversionError, match=r"mlp_only_layers \[5\] are not layers of a 2-layer model"):
        model_config_from_hf(_hf_dict("qwen3_moe", mlp_only_layers=[5]), "config.json")
    model = model_config_from_hf(_hf_dict("qwen2_moe"), "config.json")
    with pytest.raises(ConfigError, match="parallel.expert_model_parallel_size=3: must divide model.num_moe_experts=8"):
        build_transformer_config(model, ParallelConfig(expert_model_parallel_size=3), OptimConfig())
    dense = ModelConfig(num_layers=2)
    with pytest.raises(ConfigError, match="parallel.expert_model_parallel_size=2: needs a model with experts "
                                          r"\(model family llama has none\)"):
        build_transformer_config(dense, ParallelConfig(expert_model_parallel_size=2), OptimConfig())
    with pytest.raises(ModelFamilyError, match="family llama is dense"):
        build_transformer_config(ModelConfig(num_layers=2, num_moe_experts=4), ParallelConfig(), OptimConfig())


# --- import, layouts, export ------------------------------------------------------------------------

# (name, family, TP, EP, PP, sequence parallel, dispatcher); world 4, so the rest is data parallel.
LAYOUTS = [
    ("qwen3_moe-111", "qwen3_moe", 1, 1, 1, False, "alltoall"),
    ("qwen3_moe-121", "qwen3_moe", 1, 2, 1, False, "allgather"),
    ("qwen3_moe-221sp", "qwen3_moe", 2, 2, 1, True, "alltoall"),
    ("qwen3_moe-122", "qwen3_moe", 1, 2, 2, False, "alltoall"),
    ("qwen2_moe-111", "qwen2_moe", 1, 1, 1, False, "allgather"),
    ("qwen2_moe-121", "qwen2_moe", 1, 2, 1, False, "alltoall"),
    ("qwen2_moe-221sp", "qwen2_moe", 2, 2, 1, True, "allgather"),
    ("qwen2_moe-122", "qwen2_moe", 1, 2, 2, False, "allgather"),
]


def _fused_copy(hf_dir, out_dir):
    """The same model with transformers 5's fused expert tensors in place of per-expert ones."""
    import shutil

    from safetensors.torch import save_file

    out_dir.mkdir()
    for f in hf_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, out_dir / f.name)
    tensors = read_hf_weights(hf_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    experts = config.get("num_experts") or config["num_local_experts"]
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}.mlp.experts."
        if f"{prefix}0.gate_proj.weight" not in tensors:
            continue
        gate_up = [torch.cat([tensors.pop(f"{prefix}{e}.gate_proj.weight"), tensors.pop(f"{prefix}{e}.up_proj.weight")])
                   for e in range(experts)]
        down = [tensors.pop(f"{prefix}{e}.down_proj.weight") for e in range(experts)]
        tensors[f"{prefix}gate_up_proj"] = torch.stack(gate_up)
        tensors[f"{prefix}down_proj"] = torch.stack(down)
    save_file(tensors, str(out_dir / "model.safetensors"))
    return out_dir


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    tokenizer = train_tiny_sentencepiece(root / "tiny.model", VOCAB)
    originals, imported, tokens = {}, {}, {}
    for i, family in enumerate(MOE_MODELS):
        hf_dir = root / f"hf-{family}"
        model = tiny_moe_model(family, VOCAB, seed=i)
        model.save_pretrained(hf_dir)
        (hf_dir / "tokenizer.model").write_bytes(tokenizer.read_bytes())
        originals[family] = (hf_dir, model)
        imported[family] = import_from_hf(hf_dir, root / f"imported-{family}", progress_stream=None).checkpoint
        tokens[family] = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(i))
    jobs = []
    for name, family, tp, ep, pp, sp, dispatcher in LAYOUTS:
        parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, sequence_parallel=sp,
                                  expert_model_parallel_size=ep, expert_tensor_parallel_size=1,
                                  moe_token_dispatcher_type=dispatcher)
        cfg = Config(model=read_metadata(imported[family]).model_config, parallel=parallel)
        jobs.append(dict(name=name, cfg=cfg, load_from=str(imported[family]), save_to=str(root / f"saved-{name}"),
                         tokenizer=str(tokenizer), tokens=tokens[family]))
    results = merge_rank_results(run_distributed(layout_logits, 4, jobs, timeout=900))
    return dict(root=root, results=results, originals=originals, tokens=tokens, imported=imported)


@pytest.mark.parametrize("layout", [entry[0] for entry in LAYOUTS])
def test_logits_and_experts_equal_transformers(round_trip, layout):
    family = layout.split("-")[0]
    hf_dir, hf_model = round_trip["originals"][family]
    tokens = round_trip["tokens"][family]
    logits, ours_topk = round_trip["results"][layout]
    diff = (logits[..., :VOCAB] - hf_logits(hf_dir, tokens)).abs().max().item()
    print(f"{layout}: max |logit diff| vs transformers (fp32) = {diff:.3g}")
    assert diff < TOLERANCE
    theirs_topk = hf_topk(hf_model, tokens)
    assert ours_topk  # this rank's stage has an MoE layer
    for i, chosen in ours_topk.items():
        if layout.endswith("sp"):  # each TP rank routes its slice of the sequence: rank 0's half
            rows = torch.cat([r[: SEQ // 2] for r in theirs_topk[i].split(SEQ)])
            assert torch.equal(chosen, rows), f"layer {i}"
        else:
            assert torch.equal(chosen, theirs_topk[i]), f"layer {i}"


@pytest.mark.parametrize("layout", ["qwen3_moe-122", "qwen2_moe-221sp", "qwen2_moe-122"])
def test_export_after_a_layout_gives_every_tensor_back(round_trip, layout):
    family = layout.split("-")[0]
    out = round_trip["root"] / f"exported-{layout}"
    export_to_hf(round_trip["root"] / f"saved-{layout}", out, progress_stream=None)
    original = read_hf_weights(round_trip["originals"][family][0])
    exported = read_hf_weights(out)
    assert sorted(exported) == sorted(original)
    different = [name for name in original if not torch.equal(original[name], exported[name])]
    assert not different, f"{layout}: {different[:5]} differ"
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [MOE_MODELS[family][1]]
    assert model_config_from_hf(config, "exported") == read_metadata(round_trip["imported"][family]).model_config


def test_fused_expert_layout_imports_the_same_weights(round_trip):
    from megactllm.convert.megatron_reader import MegatronCheckpointReader
    from megactllm.convert.process_group import single_process_group

    root = round_trip["root"]
    hf_dir = round_trip["originals"]["qwen2_moe"][0]
    fused = _fused_copy(hf_dir, root / "hf-qwen2_moe-fused")
    out = import_from_hf(fused, root / "imported-fused", progress_stream=None).checkpoint
    with single_process_group():
        a, b = MegatronCheckpointReader(out), MegatronCheckpointReader(round_trip["imported"]["qwen2_moe"])
        assert sorted(a.tensors) == sorted(b.tensors)
        for key in a.tensors:
            assert torch.equal(a.read(key), b.read(key)), key

    from safetensors.torch import load_file, save_file

    tensors = load_file(fused / "model.safetensors")
    tensors["model.layers.1.mlp.experts.down_proj"] = tensors["model.layers.1.mlp.experts.down_proj"][:, :, :16].clone()
    save_file(tensors, str(fused / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"model.safetensors: model.layers.1.mlp.experts.down_proj is \(8, 64, 16\) "
                                              r"but config.json implies \(8, 64, 32\)"):
        import_from_hf(fused, root / "imported-fused-bad", progress_stream=None)


def test_named_shapes_count_the_published_parameters():
    from megactllm.config import get_architecture

    model = get_architecture("qwen3-30b-a3b")  # Hugging Face's safetensors total; "3.3B activated"
    assert family_of(model).num_parameters(model) == 30_532_122_624
    assert round(family_of(model).num_active_parameters(model) / 1e9, 1) == 3.4
    qwen15 = get_architecture("qwen1.5-moe-a2.7b")  # "14.3B parameters, 2.7B activated" (with embeddings)
    assert round(family_of(qwen15).num_parameters(qwen15) / 1e9, 1) == 14.3
    assert round(family_of(qwen15).num_active_parameters(qwen15) / 1e9, 1) == 2.7


def test_moe_recipe_layout_is_the_least_model_parallelism_that_fits_80gb():
    """The Qwen3-30B-A3B recipe's TP comes from the memory estimate on 16 GPUs; 8 of 80 GB fit no layout."""
    import dataclasses

    from convert_testing import REPO_ROOT

    from megactllm.config import load_config
    from megactllm.training.run.memory_estimate import GIB, estimate_memory
    from megactllm.training.run.preflight import preflight

    overrides = ["model.arch=qwen3-30b-a3b", "checkpoint.pretrained=null", "checkpoint.load=null"]
    cfg = load_config(str(REPO_ROOT / "examples" / "configs" / "qwen3_30b_a3b_continue.yaml"), overrides)
    plan = preflight(cfg, 16, check_memory=False, raise_if_unfit=False)
    assert plan.estimate.total < 70 * GIB
    less = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, tensor_model_parallel_size=1,
                                                                 sequence_parallel=False))
    assert estimate_memory(less, 16).total > 70 * GIB
    # One node: the experts' Adam state is not sharded (expert data parallelism 1) and nothing fits.
    eight = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, pipeline_model_parallel_size=2,
                                                                  expert_model_parallel_size=4,
                                                                  recompute_granularity="full"))
    assert estimate_memory(eight, 8).total > 75 * GIB
