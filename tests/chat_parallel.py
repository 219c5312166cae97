"""Functions run on gloo processes by the SFT/DPO tests (module level, so spawn can import them).

The tiny model is saved once on one process and loaded at every layout: the checkpoint is
layout-free, so TP/PP/DP runs compute with exactly the single-process weights.
"""
from __future__ import annotations

import torch

VOCAB = 64002  # the MAP-NEO SentencePiece model plus <|im_start|> and <|im_end|>
# No vocabulary padding: padding rows take part in the softmax, and TP=1 and TP=2 would pad differently.


def tiny_config(tp: int = 1, pp: int = 1, seq: int = 64, extra: tuple = ()):
    from megactllm.config import load_config

    return load_config(None, [
        "model.arch=tiny", f"model.vocab_size={VOCAB}", "model.make_vocab_size_divisible_by=1", f"model.seq_length={seq}", f"model.max_position_embeddings={seq}",
        f"parallel.tensor_model_parallel_size={tp}", f"parallel.pipeline_model_parallel_size={pp}", *extra,
    ])


def save_tiny_checkpoint(path: str, seq: int, seed: int = 7) -> str:
    from megactllm.model import build_model
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.checkpoint import Checkpointer

    cfg = tiny_config(seq=seq)
    initialize_parallel(cfg.parallel, seed=seed, num_layers=cfg.model.num_layers)
    chunks = build_model(cfg.model, cfg.parallel, cfg.optim)
    out = str(Checkpointer(path).save(0, chunks, cfg))
    destroy_parallel()
    return out


def make_task(stage: str, cfg):
    from megactllm.training.stages.dpo.task import DPOTask
    from megactllm.training.stages.sft import SFTTask

    return {"sft": SFTTask, "dpo": DPOTask}[stage](cfg)


def _report_on_current_layout(stage: str, cfg, checkpoint: str, items: list, micro_batch_size: int):
    """One global batch (items split over DP ranks, then micro-batches), forward and backward:
    (summed report on the last pipeline stage of TP rank 0 else None, gradients all finite)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megactllm.model import build_model
    from megactllm.training.batches import collate
    from megactllm.checkpoint import Checkpointer

    chunks = build_model(cfg.model, cfg.parallel, cfg.optim)
    Checkpointer.load_weights(checkpoint, chunks, cfg.model)
    for chunk in chunks:
        chunk.config.calculate_per_token_loss = True
        chunk.config.finalize_model_grads_func = None
    task = make_task(stage, cfg)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    per_rank = len(items) // dp
    mine = items[dp_rank * per_rank : (dp_rank + 1) * per_rank]
    microbatches = [collate(mine[i : i + micro_batch_size]) for i in range(0, len(mine), micro_batch_size)]
    microbatches = task.prepare_global_batch(microbatches, chunks)
    results = get_forward_backward_func()(
        forward_step_func=task.forward_step,
        data_iterator=[iter(microbatches) for _ in chunks],
        model=chunks,
        num_microbatches=len(microbatches),
        seq_length=cfg.model.seq_length,
        micro_batch_size=micro_batch_size * task.provides.sequences_per_sample,
        forward_only=False,  # the backward must run at every layout too
    )
    grads_finite = all(torch.isfinite(p.grad).all() for c in chunks for p in c.parameters() if p.grad is not None)
    keep = parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
    out = {name: torch.stack([r[name] for r in results]).sum(0).tolist() for name in results[0]} if keep else None
    return out, grads_finite


def layout_reports(tp: int, pp: int, jobs: list, seq: int) -> list:
    """Per job (stage, policy checkpoint, items, micro_batch_size, reference checkpoint or None):
    the (report, grads finite) of _report_on_current_layout, all on one TP x PP x DP layout."""
    from megactllm.parallel import destroy_parallel, initialize_parallel

    initialize_parallel(tiny_config(tp, pp, seq).parallel, seed=1, num_layers=4)
    out = []
    for stage, checkpoint, items, micro_batch_size, reference in jobs:
        cfg = tiny_config(tp, pp, seq, (f"train.stage={stage}", f"checkpoint.pretrained={reference or checkpoint}"))
        out.append(_report_on_current_layout(stage, cfg, checkpoint, items, micro_batch_size))
    destroy_parallel()
    return out


def precompute_then_report(pp: int, policy: str, reference: str, tokenizer_model: str, prefix: str, output: str, seq: int,
                           count: int):
    """Reference log-probs precomputed at PP=pp into `output`, then a DPO step at the same layout on
    the first `count` pairs read with those values (and no reference model: its checkpoint is absent)."""
    from megactllm.config import load_config
    from megactllm.data.chat.dpo_dataset import build_dpo_datasets
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.tokenizer import load_tokenizer
    from megactllm.training.stages.dpo.reference import precompute_reference_logps

    tokenizer = load_tokenizer("sentencepiece", tokenizer_model)
    cfg = tiny_config(1, pp, seq, (f"checkpoint.pretrained={reference}", f"data.train_data_path=['{prefix}']",
                                   "train.micro_batch_size=2"))
    initialize_parallel(cfg.parallel, seed=1, num_layers=cfg.model.num_layers)
    precompute_reference_logps(cfg, tokenizer, output, microbatches_per_call=4)
    read = load_config(None, [f"model.seq_length={seq}", f"data.train_data_path=['{prefix}']",
                              f"dpo.reference_logprobs={output}"])
    train = build_dpo_datasets(read, tokenizer)[0]
    items = [train[i] for i in range(count)]
    has_reference = all("reference_logps" in it for it in items)
    step_cfg = tiny_config(1, pp, seq, ("train.stage=dpo", "checkpoint.pretrained=/nonexistent"))
    report = _report_on_current_layout("dpo", step_cfg, policy, items, 2)
    destroy_parallel()
    return report, has_reference


def dpo_training_run(checkpoint: str, items: list, steps: int, lr: float, micro_batch_size: int, seq: int, beta: float):
    """A few DPO steps on one process (Adam on the plain model); the batch report before each step
    and after the last one. The reference is the checkpoint, the policy starts from it."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megactllm.model import build_model
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.training.batches import collate
    from megactllm.checkpoint import Checkpointer

    cfg = tiny_config(1, 1, seq, ("train.stage=dpo", f"checkpoint.pretrained={checkpoint}", f"dpo.beta={beta}"))
    initialize_parallel(cfg.parallel, seed=1, num_layers=cfg.model.num_layers)
    chunks = build_model(cfg.model, cfg.parallel, cfg.optim)
    Checkpointer.load_weights(checkpoint, chunks, cfg.model)
    for chunk in chunks:
        chunk.config.calculate_per_token_loss = True
        chunk.config.finalize_model_grads_func = None
    task = make_task("dpo", cfg)
    params = [p for c in chunks for p in c.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    microbatches = [collate(items[i : i + micro_batch_size]) for i in range(0, len(items), micro_batch_size)]
    microbatches = task.prepare_global_batch(microbatches, chunks)  # reference log-probs, once: the batch repeats
    reports = []
    for step in range(steps + 1):
        optimizer.zero_grad()
        results = get_forward_backward_func()(
            forward_step_func=task.forward_step, data_iterator=[iter(microbatches)], model=chunks,
            num_microbatches=len(microbatches), seq_length=seq, micro_batch_size=2 * micro_batch_size,
            forward_only=step == steps)
        total = torch.stack([torch.stack([r[k] for r in results]).sum(0) for k in sorted(results[0])])
        reports.append({k: float(v[0] / v[1]) for k, v in zip(sorted(results[0]), total)})
        if step < steps:
            pairs = float(total[0][1])
            for p in params:
                if p.grad is not None:
                    p.grad /= pairs  # the loop divides by the global pair count; here one process holds all
            optimizer.step()
    destroy_parallel()
    return reports


def sft_then_dpo_through_the_loop(workdir: str, tokenizer_model: str, sft_blend: list, dpo_prefix: str, seq: int, pp: int):
    """The real loop: 2 SFT steps from scratch, saved; then 2 DPO steps whose policy and reference
    both start from that SFT checkpoint. Returns (sft losses, dpo losses, dpo first-step metrics)."""
    import json

    from megactllm.config import load_config
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.training.trainer import run_training

    common = [
        "model.arch=tiny", f"model.vocab_size={VOCAB}", "model.make_vocab_size_divisible_by=1", f"model.seq_length={seq}",
        f"model.max_position_embeddings={seq}", f"parallel.pipeline_model_parallel_size={pp}",
        f"data.tokenizer_model={tokenizer_model}", "train.global_batch_size=4", "train.micro_batch_size=2",
        "train.duration=2 iterations", "logging.interval=1", "validation.interval=0", "optim.lr=1e-3", "optim.min_lr=0.0",
    ]
    sft_cfg = load_config(None, common + ["train.stage=sft", f"data.train_data_path={sft_blend}",
                                          f"checkpoint.save={workdir}/sft", f"logging.dir={workdir}/sft_log"])
    initialize_parallel(sft_cfg.parallel, seed=1, num_layers=sft_cfg.model.num_layers)
    sft = run_training(sft_cfg)
    dpo_cfg = load_config(None, common + ["train.stage=dpo", f"data.train_data_path=['{dpo_prefix}']",
                                          f"checkpoint.pretrained={workdir}/sft", f"logging.dir={workdir}/dpo_log"])
    dpo = run_training(dpo_cfg)
    destroy_parallel()
    with open(f"{workdir}/dpo_log/metrics.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    first = next(r for r in records if r.get("iteration") == 1 and "metrics" in r)
    return sft.losses, dpo.losses, first["metrics"]
