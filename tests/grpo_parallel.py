"""Functions run on gloo processes by the GRPO tests (module level, so the rank processes can import them)."""
from __future__ import annotations

import json

VOCAB = 1000  # a SentencePiece model of 1000 pieces trained on GSM8K's questions (tests/test_grpo_stage.py)


def grpo_overrides(workdir: str, tokenizer_model: str, prompts: str, seq: int, tp: int = 1, pp: int = 1, extra: tuple = ()) -> list:
    return [
        "model.arch=tiny", f"model.vocab_size={VOCAB}", "model.make_vocab_size_divisible_by=1", f"model.seq_length={seq}",
        f"model.max_position_embeddings={seq}", f"parallel.tensor_model_parallel_size={tp}",
        f"parallel.pipeline_model_parallel_size={pp}", f"data.tokenizer_model={tokenizer_model}", f"data.prompts_path={prompts}",
        "train.stage=grpo", "train.micro_batch_size=1", "logging.interval=1", "validation.interval=0",
        f"logging.dir={workdir}/log", "optim.lr=1e-3", "optim.min_lr=1e-3", "optim.lr_decay_style=constant",
        "grpo.group_size=4", "grpo.prompts_per_step=2", "grpo.max_completion_tokens=12", *extra,
    ]


def grpo_run(workdir: str, tokenizer_model: str, prompts: str, seq: int, tp: int = 1, pp: int = 1, extra: tuple = ()):
    """train.stage=grpo through the real loop; returns the per-iteration metrics of metrics.jsonl (rank 0)."""
    import torch.distributed as dist

    from megactllm.config import load_config
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.training.trainer import run_training

    cfg = load_config(None, grpo_overrides(workdir, tokenizer_model, prompts, seq, tp, pp, extra))
    initialize_parallel(cfg.parallel, seed=cfg.train.seed, num_layers=cfg.model.num_layers)
    try:
        run_training(cfg)
    finally:
        destroy_parallel()
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    with open(f"{workdir}/log/metrics.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if "metrics" in r and "iteration" in r]
