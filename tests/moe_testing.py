"""Tiny mixture-of-experts models made by transformers itself, and the rank functions of the MoE
tests (top level, so the ranks run_distributed starts can import them)."""
from __future__ import annotations

import torch

# Per family: (config class, model class, config). Qwen3-MoE with a dense first layer (mlp_only_layers)
# and renormalised top-k; Qwen2-MoE all-MoE, unrenormalised top-k, a gated shared expert, QKV bias.
MOE_MODELS = {
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
        mlp_only_layers=[0], rope_theta=1000000.0, tie_word_embeddings=False, rms_norm_eps=1e-6)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(
        hidden_size=64, intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
        num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=3, norm_topk_prob=False,
        rope_theta=1000000.0, tie_word_embeddings=False, rms_norm_eps=1e-6, use_sliding_window=False)),
}
EXPECTED_FAMILY = {"qwen3_moe": "qwen3_moe", "qwen2_moe": "qwen2_moe"}


def moe_hf_config(family: str, vocab_size: int, **overrides):
    import transformers

    config_class, _, values = MOE_MODELS[family]
    values = {**values, "vocab_size": vocab_size, "num_hidden_layers": 2, "max_position_embeddings": 64, **overrides}
    return getattr(transformers, config_class)(**values)


def tiny_moe_model(family: str, vocab_size: int, seed: int = 0, **overrides):
    """A random MoE model with non-zero biases, random norms and router weights large enough that
    each token's top k is decided by a clear margin (not by rounding)."""
    import transformers

    _, model_class, _ = MOE_MODELS[family]
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(moe_hf_config(family, vocab_size, **overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.5)
            elif name.endswith("mlp.gate.weight"):
                param.normal_(0.0, 0.5)
            elif "shared_expert_gate" in name:
                param.normal_(0.0, 0.3)
    return model.eval()


def hf_topk(model, tokens: torch.Tensor) -> dict:
    """{layer: [tokens, k] sorted expert ids} of transformers' routers on `tokens`."""
    chosen, hooks = {}, []
    for i, layer in enumerate(model.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is None or not hasattr(gate, "top_k"):
            continue
        hooks.append(gate.register_forward_hook(
            lambda mod, args, out, i=i: chosen.setdefault(i, []).append(out[2].sort(dim=-1).values)))
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    return {i: torch.cat(v) for i, v in chosen.items()}


def megatron_topk(chunks) -> tuple[dict, list]:
    """Hooks on megatron's routers collecting each layer's sorted top-k expert ids; (store, hooks)."""
    chosen, hooks = {}, []
    for chunk in chunks:
        for layer in chunk.decoder.layers:
            router = getattr(layer.mlp, "router", None)
            if router is None:
                continue
            i = layer.layer_number - 1
            hooks.append(router.register_forward_hook(
                lambda mod, args, out, i=i: chosen.setdefault(i, []).append(
                    out[1].nonzero()[:, 1].reshape(out[1].shape[0], -1).sort(dim=-1).values)))
    return chosen, hooks


def layout_logits(jobs: list[dict]) -> dict:
    """Each job: bring up its (TP, EP, PP) layout, load `load_from`, compute logits of `tokens` (and the
    routers' top-k), save again at that layout into `save_to`. {name: (logits, topk)} from the rank holding them."""
    from convert_testing import megactllm_logits
    from megatron.core import parallel_state

    from megactllm.checkpoint import Checkpointer
    from megactllm.model import build_model
    from megactllm.parallel import destroy_parallel, initialize_parallel

    results = {}
    for job in jobs:
        cfg = job["cfg"]
        initialize_parallel(cfg.parallel, seed=1234, num_layers=cfg.model.num_layers)
        chunks = build_model(cfg.model, cfg.parallel, cfg.optim)
        Checkpointer.load_weights(job["load_from"], chunks, cfg.model)
        chosen, hooks = megatron_topk(chunks)
        logits = megactllm_logits(chunks, job["tokens"])
        for h in hooks:
            h.remove()
        if job.get("save_to"):
            Checkpointer(job["save_to"]).save(1, chunks, cfg, tokenizer_path=job["tokenizer"])
        if logits is not None and parallel_state.get_tensor_model_parallel_rank() == 0 \
                and parallel_state.get_data_parallel_rank() == 0:
            results[job["name"]] = (logits, {i: torch.cat(v) for i, v in chosen.items()})
        parallel_state.destroy_model_parallel()
    destroy_parallel()
    return results
