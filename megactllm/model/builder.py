"""Build megatron-core GPTModel chunks for a ModelConfig on the current parallel layout.

LLaMA-style blocks: RMSNorm, SwiGLU, RoPE, optional GQA and tied embeddings; what a model family
adds (QKV bias, per-head Q/K RMSNorm, llama3 RoPE scaling) comes from megactllm.model.families.
The Transformer Engine layer spec is used when TE imports on a CUDA machine; otherwise the local
(pure megatron-core) spec, which is what runs on CPU processes. The local spec's core attention is
torch's fused scaled_dot_product_attention (megactllm.model.sdpa_attention) unless megatron's own
DotProductAttention is asked for (`local_attention="megatron"`, the reference in tests and benches).
"""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch
import torch.nn.functional as F

from megactllm.config import ModelConfig, OptimConfig, ParallelConfig
from megactllm.model.families import family_of
from megactllm.model.norm import RMSNorm


def transformer_engine_available() -> bool:
    if not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # a broken TE install must not stop training on the local spec
        return False
    return True


def params_dtype(optim: Optional[OptimConfig]) -> torch.dtype:
    if optim is not None and optim.bf16:
        return torch.bfloat16
    if optim is not None and optim.fp16:
        return torch.float16
    return torch.float32


def build_transformer_config(model: ModelConfig, parallel: ParallelConfig, optim: Optional[OptimConfig] = None):
    """megatron-core TransformerConfig for our model, parallel layout and precision."""
    from megatron.core.transformer import TransformerConfig

    family = family_of(model)
    family.check(model, where=f"model (family {family.name})")
    check_expert_layout(model, parallel)

    on_gpu = torch.cuda.is_available()
    dtype = params_dtype(optim)
    recompute_method = parallel.recompute_method
    recompute_num_layers = parallel.recompute_num_layers
    if parallel.recompute_granularity == "full" and recompute_method is None:
        recompute_method, recompute_num_layers = "uniform", recompute_num_layers or 1
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        **family.transformer_config_kwargs(model),
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=model.add_bias_linear,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_method_std=model.init_method_std,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        # TE's DotProductAttention reads it (p2p, a2a, all_gather); the local SDPA spec ignores it.
        cp_comm_type=parallel.cp_comm_type if parallel.context_parallel_size > 1 else None,
        sequence_parallel=parallel.sequence_parallel,
        recompute_granularity=parallel.recompute_granularity,
        recompute_method=recompute_method if parallel.recompute_granularity == "full" else None,
        recompute_num_layers=recompute_num_layers if parallel.recompute_granularity == "full" else None,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        # On CPU, initialise full weights then split them, and use no fused CUDA kernels.
        use_cpu_initialization=not on_gpu,
        bias_activation_fusion=on_gpu,
        masked_softmax_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        apply_rope_fusion=False,
        persist_layer_norm=on_gpu,
        gradient_accumulation_fusion=False,
        cross_entropy_loss_fusion=on_gpu,
        attention_softmax_in_fp32=True,
        deallocate_pipeline_outputs=True,
        # gloo matches sends and receives between two ranks in posting order; batched p2p posts the
        # interleaved schedule's forward and backward tensors to the same peer (PP=2 ring) in an order
        # that swaps them on gloo. The unbatched path pairs them even/odd; NCCL keeps the batched one.
        batch_p2p_comm=on_gpu,
        **moe_config_kwargs(model, parallel, on_gpu),
    )


def check_expert_layout(model: ModelConfig, parallel: ParallelConfig) -> None:
    """Expert parallelism splits whole experts (the recipe's check, for a model built outside one)."""
    parallel.check_experts(model)


def moe_config_kwargs(model: ModelConfig, parallel: ParallelConfig, on_gpu: bool) -> dict:
    """TransformerConfig fields of a mixture-of-experts model (none for a dense one).

    The router runs in fp32 whatever the weights' dtype. Top-k renormalised probabilities are
    megatron's softmax over the k largest logits (equal to HF's norm_topk_prob); unrenormalised
    ones are its pre-softmax routing (softmax over all experts, then the top k), HF's norm_topk_prob
    false. Grouped GEMM needs Transformer Engine; CPU runs each expert in turn (SequentialMLP).
    """
    if not model.is_moe:
        return {}
    kwargs = dict(
        num_moe_experts=model.num_moe_experts,
        moe_router_topk=model.moe_router_topk,
        moe_ffn_hidden_size=model.moe_ffn_hidden_size or model.ffn_hidden_size,
        moe_router_pre_softmax=not model.moe_norm_topk_prob,
        moe_router_score_function="softmax",
        moe_router_dtype="fp32",
        moe_router_load_balancing_type="aux_loss" if model.moe_aux_loss_coeff else "none",
        moe_aux_loss_coeff=model.moe_aux_loss_coeff,
        moe_z_loss_coeff=model.moe_z_loss_coeff or None,
        moe_token_dispatcher_type=parallel.moe_token_dispatcher_type,
        moe_grouped_gemm=on_gpu and transformer_engine_available(),
        moe_permute_fusion=False,
        moe_router_fusion=False,
        expert_model_parallel_size=parallel.expert_model_parallel_size,
        expert_tensor_parallel_size=parallel.expert_tensor_parallel_size,
        moe_shared_expert_intermediate_size=model.moe_shared_expert_intermediate_size,
        moe_shared_expert_gate=model.moe_shared_expert_gate,
        moe_shared_expert_overlap=False,
    )
    if model.moe_layer_pattern is not None:
        kwargs["moe_layer_freq"] = [int(x) for x in model.moe_layer_pattern]
    return kwargs


LOCAL_ATTENTION = ("sdpa", "megatron")


def layer_spec(use_transformer_engine: Optional[bool] = None, local_attention: str = "sdpa"):
    """One transformer layer's ModuleSpec: TE's fused modules, or megatron's local ones with our RMSNorm.

    `local_attention` picks the local spec's core attention: "sdpa" (torch's fused kernel) or
    "megatron" (DotProductAttention, which materialises the score matrix).
    """
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if use_transformer_engine is None:
        use_transformer_engine = transformer_engine_available()
    if use_transformer_engine:
        return get_gpt_layer_with_transformer_engine_spec()
    if local_attention not in LOCAL_ATTENTION:
        raise ValueError(f"local_attention={local_attention!r}; choose one of {LOCAL_ATTENTION}")
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    if local_attention == "sdpa":
        from megactllm.model.sdpa_attention import SDPAttention

        spec.submodules.self_attention.submodules.core_attention = SDPAttention
    spec.submodules.input_layernorm = RMSNorm
    spec.submodules.pre_mlp_layernorm = RMSNorm
    return spec


def block_spec(config, spec, vp_stage: Optional[int] = None):
    """The layers this pipeline stage builds, plus the final norm (ours on the local spec)."""
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    final_norm = RMSNorm
    first = spec[0] if isinstance(spec, (list, tuple)) else spec
    if first.submodules.input_layernorm is not RMSNorm:  # TE spec: TE's own norm for the final one
        from megatron.core.extensions.transformer_engine import TENorm

        final_norm = TENorm
    layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    if not isinstance(spec, (list, tuple)):
        return TransformerBlockSubmodules(layer_specs=[spec] * layers, layer_norm=final_norm)
    from megatron.core import parallel_state
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    # One spec per global layer (dense and MoE layers mixed): this stage's slice of them.
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage,
                                          pp_rank=parallel_state.get_pipeline_model_parallel_rank())
    return TransformerBlockSubmodules(layer_specs=list(spec[offset : offset + layers]), layer_norm=final_norm)


def moe_layer_spec(model: ModelConfig, dense_spec, use_transformer_engine: bool):
    """The spec of one MoE layer, built like `dense_spec` (same attention and norms).

    Its pre-MLP norm is a module of its own under both specs (TE cannot fuse it into a router), so it
    is saved as `pre_mlp_layernorm.weight`: a checkpoint moves between the local and the TE spec.
    """
    import copy

    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if use_transformer_engine:
        moe = get_gpt_layer_with_transformer_engine_spec(num_experts=model.num_moe_experts, moe_grouped_gemm=True)
        spec = copy.deepcopy(dense_spec)
        spec.submodules.mlp = moe.submodules.mlp
        spec.submodules.pre_mlp_layernorm = moe.submodules.pre_mlp_layernorm
        spec.submodules.sharded_state_dict_keys_map = dict(moe.submodules.sharded_state_dict_keys_map)
        return spec
    moe = get_gpt_layer_local_spec(num_experts=model.num_moe_experts, moe_grouped_gemm=False, normalization="RMSNorm")
    spec = copy.deepcopy(dense_spec)
    spec.submodules.mlp = moe.submodules.mlp
    spec.submodules.sharded_state_dict_keys_map = {
        k: v for k, v in spec.submodules.sharded_state_dict_keys_map.items() if not k.startswith("pre_mlp_layernorm")
    }
    return spec


def model_layer_specs(model: ModelConfig, spec, use_transformer_engine: Optional[bool] = None):
    """The spec(s) for `model`: `spec` itself for a dense model, else one spec per global layer."""
    if not model.is_moe:
        return spec
    if use_transformer_engine is None:
        use_transformer_engine = spec.submodules.input_layernorm is not RMSNorm
    moe = moe_layer_spec(model, spec, use_transformer_engine)
    return [moe if is_moe else spec for is_moe in model.moe_layers()]


def with_qk_layernorm(spec):
    """A copy of a layer spec with RMSNorm on each head's queries and keys (ours on the local spec)."""
    import copy

    spec = copy.deepcopy(spec)
    norm = RMSNorm
    if spec.submodules.input_layernorm is not RMSNorm:
        from megatron.core.extensions.transformer_engine import TENorm

        norm = TENorm
    spec.submodules.self_attention.submodules.q_layernorm = norm
    spec.submodules.self_attention.submodules.k_layernorm = norm
    return spec


def decoder_block_spec(model: ModelConfig, config, vp_stage: Optional[int] = None, spec=None):
    """The decoder's layer specs (and final norm) for this model: what GPTModel builds, and what the
    streamed import builds one layer at a time (convert.importer)."""
    spec = spec if spec is not None else layer_spec()
    if model.qk_layernorm:
        spec = with_qk_layernorm(spec)
    return block_spec(config, model_layer_specs(model, spec), vp_stage)


def build_model_chunk(model: ModelConfig, config, vp_stage: Optional[int] = None, spec=None):
    """One GPTModel holding this rank's layers (of virtual stage `vp_stage` when VPP is on)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    tp = parallel_state.get_tensor_model_parallel_world_size()
    chunk = GPTModel(
        config=config,
        transformer_layer_spec=decoder_block_spec(model, config, vp_stage, spec),
        vocab_size=model.padded_vocab_size(tp),
        max_sequence_length=model.max_position_embeddings or model.seq_length,
        pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        parallel_output=True,
        share_embeddings_and_output_weights=model.tie_word_embeddings,
        vp_stage=vp_stage,
        **family_of(model).gpt_model_kwargs(model),
    )
    if chunk.post_process:
        mask_padded_vocab_logits(chunk.output_layer, model.vocab_size, model.padded_vocab_size(tp))
    return chunk


def mask_padded_vocab_logits(output_layer, vocab_size: int, padded_vocab_size: int) -> None:
    """Give the padding rows of the vocabulary a logit of -inf.

    The embedding is padded to a multiple of 128 x TP, so the padding differs between layouts and
    does not exist in a Hugging Face export. Left in the softmax (as Megatron-LM does), padding logits
    change the loss when a checkpoint moves to another TP size and make it differ from the exported
    model's. Masked, they take no probability and get no gradient: the loss depends on the true
    vocabulary only, at every layout.
    """
    from megatron.core import parallel_state

    if padded_vocab_size == vocab_size:
        return
    tp = parallel_state.get_tensor_model_parallel_world_size()
    shard = padded_vocab_size // tp
    start = parallel_state.get_tensor_model_parallel_rank() * shard
    first_padded = max(vocab_size - start, 0)  # local column where padding begins on this rank
    if first_padded >= shard:
        return

    def hook(module, args, output):
        logits, bias = output
        # Not in place: the logits may be a view that autograd still needs.
        keep = torch.arange(logits.shape[-1], device=logits.device) < first_padded
        return logits.masked_fill(~keep, float("-inf")), bias

    output_layer.register_forward_hook(hook)


def build_model(
    model: ModelConfig,
    parallel: ParallelConfig,
    optim: Optional[OptimConfig] = None,
    use_transformer_engine: Optional[bool] = None,
    local_attention: str = "sdpa",
) -> list:
    """This rank's model chunks (one per virtual pipeline stage), on its device, unwrapped.

    Call after megactllm.parallel.initialize_parallel. The training loop wraps the chunks in
    Float16Module (bf16/fp16) and megatron-core's DistributedDataParallel.
    """
    config = build_transformer_config(model, parallel, optim)
    spec = layer_spec(use_transformer_engine, local_attention)
    vpp = parallel.virtual_pipeline_model_parallel_size
    stages = list(range(vpp)) if vpp and parallel.pipeline_model_parallel_size > 1 else [None]
    chunks = [build_model_chunk(model, config, vp_stage=stage, spec=spec) for stage in stages]
    if torch.cuda.is_available():
        chunks = [chunk.cuda(torch.cuda.current_device()) for chunk in chunks]
    return chunks
