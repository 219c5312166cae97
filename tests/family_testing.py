"""Tiny Hugging Face models of each family (made by transformers itself), and the rank function of
the family round-trip test. Top-level functions so spawned ranks can import them."""
from __future__ import annotations

import torch

# Per family: (transformers config class, model class, config). Real widths where a CPU allows
# (Qwen2.5-0.5B, Qwen3-0.6B), narrower for the 1B/7B ones; two layers each, so PP=2 has one a stage.
FAMILY_MODELS = {
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=512, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
        rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192})),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
        rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6, use_sliding_window=False)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        hidden_size=256, intermediate_size=896, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
        rope_theta=1000000.0, tie_word_embeddings=False, rms_norm_eps=1e-5, sliding_window=None)),
}


def hf_config(family: str, vocab_size: int, **overrides):
    import transformers

    config_class, _, values = FAMILY_MODELS[family]
    values = {**values, "vocab_size": vocab_size, "num_hidden_layers": 2, "max_position_embeddings": 64, **overrides}
    return getattr(transformers, config_class)(**values)


def tiny_hf_model(family: str, vocab_size: int, seed: int = 0, **overrides):
    """A random model of the family with non-zero biases and non-trivial norm weights (random init
    leaves biases at 0 and norms at 1, which would hide a dropped or swapped one)."""
    import transformers

    _, model_class, _ = FAMILY_MODELS[family]
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(hf_config(family, vocab_size, **overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.5)
    return model.eval()


def load_logits_and_resave(jobs: list[dict]) -> dict:
    """Each job: load `load_from` at its TP x PP layout, compute logits of `tokens`, save the loaded
    model again at that layout into `save_to`. Returns {name: logits} from the rank holding them."""
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
        logits = megactllm_logits(chunks, job["tokens"])
        Checkpointer(job["save_to"]).save(1, chunks, cfg, tokenizer_path=job["tokenizer"])
        if logits is not None and parallel_state.get_tensor_model_parallel_rank() == 0:
            results[job["name"]] = logits
        parallel_state.destroy_model_parallel()
    destroy_parallel()
    return results


def train_runs(runs: list[list[str]]) -> list[int]:
    """Each run: the overrides of one `megactllm train` (the entry the CLI calls), one after the other
    in this process. Returns their exit codes."""
    from megactllm.training.main import main

    return [main(overrides) for overrides in runs]
