#!/usr/bin/env python
"""DPO step time against two SFT steps of the same batch, and with precomputed reference log-probs.

A DPO step over P pairs runs the policy forward+backward over 2P sequences (chosen and rejected)
plus the frozen reference forward over the same 2P sequences. The yardstick is two SFT steps of the
same batch: one over the P chosen sequences, one over the P rejected ones (same micro-batch shape).
Expected: DPO / (2 x SFT) near (3 + 1) / 3 with the live reference (a forward is about a third of
forward+backward), near 1 with precomputed reference log-probs. All three are timed in one run,
in alternation, through the real training loop (megactllm.training.trainer.Trainer.train_step), on
real pairs; the three models are in memory together (use TP/PP to fit a large one).

    python bench/dpo_step.py                                     # tiny model, one CPU process
    torchrun --nproc-per-node 2 bench/dpo_step.py parallel.tensor_model_parallel_size=2
    python bench/dpo_step.py --pairs 8 --seq-length 2048 model.arch=ctllm-2b optim.bf16=true   # one GPU
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEGACTLLM_SHARED_DATA", REPO.parent / "shared" / "data"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=8, help="pairs per step (the DPO global batch)")
    p.add_argument("--micro-batch-size", type=int, default=2, help="pairs per micro-batch")
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps of each kind")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--workdir", default=None, help="where data and the reference checkpoint go (default: a temp dir)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.arch=ctllm-2b optim.bf16=true")
    return p.parse_args(argv)


def rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def prepare_data(work: Path, pairs_needed: int, seq_length: int) -> tuple[str, str]:
    """Chat tokenizer and a DPO dataset of the first real pairs (zh and en alternating)."""
    from megactllm.data.chat.dpo_preprocess import preprocess_dpo
    from megactllm.tokenizer import load_tokenizer
    from megactllm.tokenizer.chat_template import CHAT_SPECIAL_TOKENS
    from megactllm.tokenizer.extend import extend_sentencepiece

    tok_path, prefix = str(work / "chat_sp.model"), str(work / "dpo_bench")
    if rank0():
        extend_sentencepiece(str(SHARED / "tokenizers" / "map_neo_sp.model"), user_defined=list(CHAT_SPECIAL_TOKENS),
                             output_path=tok_path)
        zh = json.loads((SHARED / "dpo" / "dpo_zh_demo.json").read_text(encoding="utf-8"))
        en = json.loads((SHARED / "dpo" / "dpo_en_demo.json").read_text(encoding="utf-8"))
        records = [r for pair in zip(zh, en) for r in pair][:pairs_needed]
        if len(records) < pairs_needed:
            raise SystemExit(f"only {len(records)} demo pairs; lower --pairs or --steps")
        src = work / "pairs.json"
        src.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        preprocess_dpo([str(src)], prefix, load_tokenizer("sentencepiece", tok_path), seq_length)
    barrier()
    return tok_path, prefix


class HalvesDataset:
    """SFT rows made of the DPO pairs' halves: per DPO step, its P chosen rows, then its P rejected rows."""

    def __init__(self, dpo_dataset, pairs_per_step: int) -> None:
        self.dpo, self.p = dpo_dataset, pairs_per_step

    def __len__(self) -> int:
        return 2 * len(self.dpo)

    def __getitem__(self, i: int) -> dict:
        step, k = divmod(i, 2 * self.p)
        half, j = divmod(k, self.p)
        item = self.dpo[step * self.p + j]
        return {name: value[half] for name, value in item.items()}


def sft_task_on_halves(pairs_per_step: int):
    from megactllm.data.chat.dpo_dataset import build_dpo_datasets
    from megactllm.training.stages.sft import SFTTask

    class HalvesSFTTask(SFTTask):
        def build_datasets(self, cfg, tokenizer):
            self.cfg = cfg
            return HalvesDataset(build_dpo_datasets(cfg, tokenizer)[0], pairs_per_step), None, None

    return HalvesSFTTask()


def time_step(trainer) -> float:
    """Seconds of one training step of `trainer` (the loop's own train_step), then advance its data."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.train_step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    trainer.state.consumed_samples += trainer.cfg.train.global_batch_size
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    from megactllm.config import load_config
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.checkpoint import Checkpointer
    from megactllm.training.stages.dpo.reference import precompute_reference_logps
    from megactllm.training.trainer import Trainer

    if not SHARED.is_dir():
        print(f"error: {SHARED} (real DPO pairs, tokenizer) is absent; set MEGACTLLM_SHARED_DATA", file=sys.stderr)
        return 2
    steps_total = args.warmup + args.steps
    base = ["model.arch=tiny", "model.vocab_size=64002", f"model.seq_length={args.seq_length}",
            f"model.max_position_embeddings={args.seq_length}"]
    probe = load_config(None, base + args.overrides)
    if "WORLD_SIZE" not in os.environ and "SLURM_PROCID" not in os.environ:
        from megactllm.testing.distributed import free_port

        os.environ.setdefault("MASTER_PORT", str(free_port()))  # a lone process: any free port, not 29500
    initialize_parallel(probe.parallel, seed=1234, num_layers=probe.model.num_layers)
    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="dpo_bench_") if rank0() else None
        names = [tmp.name if tmp else None]
        if dist.is_initialized():
            dist.broadcast_object_list(names, src=0)
        work = Path(names[0])
    tok, prefix = prepare_data(work, args.pairs * (2 * steps_total + 2), args.seq_length)
    common = base + [
        f"data.tokenizer_model={tok}", f"data.data_path=['{prefix}']", "data.split='100,0,0'",
        f"train.global_batch_size={args.pairs}", f"train.micro_batch_size={args.micro_batch_size}",
        f"train.duration={steps_total} iterations", "validation.interval=0", "logging.interval=1000000",
        f"logging.dir={work / 'logs'}", "optim.lr=1e-6", "optim.min_lr=0.0", "optim.lr_warmup_iters=0",
    ]
    results = {}

    from megactllm.training.stages.dpo.task import forward_only_pair_logps

    # The three runs live side by side and their steps are timed in alternation, so that on a
    # shared machine each kind of step sees the same background load.
    # 1. DPO with the live reference (a frozen copy of the initial policy, built at its first step).
    dpo = Trainer(load_config(None, common + ["train.stage=dpo"] + args.overrides))
    time_step(dpo)
    ckpt_dir = str(work / "reference")
    Checkpointer(ckpt_dir).save(0, dpo.task.reference_chunks, dpo.cfg)
    # 2. DPO with reference log-probs precomputed once for the whole set.
    ref_file = str(work / "reference_logps.npz")
    pre_cfg = load_config(None, common + ["train.stage=dpo", f"checkpoint.pretrained={ckpt_dir}"] + args.overrides)
    start = time.perf_counter()
    precompute_reference_logps(pre_cfg, load_tokenizer_for(pre_cfg), ref_file)
    results = {"precompute_total": [time.perf_counter() - start]}
    dpo_pre = Trainer(load_config(None, common + ["train.stage=dpo", f"dpo.reference_logprobs={ref_file}"] + args.overrides))
    # 3. Two SFT steps of the same batch: the chosen rows, then the rejected rows.
    sft_cfg = load_config(None, common + [
        "train.stage=sft", f"train.micro_batch_size={2 * args.micro_batch_size}",
        f"train.duration={2 * steps_total} iterations"] + args.overrides)
    sft = Trainer(sft_cfg, task=sft_task_on_halves(args.pairs))
    sft.state.consumed_samples = 2 * args.pairs  # align with the live run, one step ahead

    for key in ("dpo_live", "dpo_precomputed", "two_sft", "reference_forward"):
        results[key] = []
    for r in range(steps_total):
        batch = dpo.train_reader.step(dpo.state.consumed_samples)
        start = time.perf_counter()
        forward_only_pair_logps(dpo.task.reference_chunks, batch, dpo.cfg.model.seq_length)
        ref_time = time.perf_counter() - start
        times = (time_step(dpo), time_step(dpo_pre), time_step(sft) + time_step(sft), ref_time)
        if r >= args.warmup:
            for key, t in zip(("dpo_live", "dpo_precomputed", "two_sft", "reference_forward"), times):
                results[key].append(t)
    for trainer in (dpo, dpo_pre, sft):
        trainer.log.close()

    if rank0():
        med = {k: statistics.median(v) for k, v in results.items()}
        low = {k: min(v) for k, v in results.items()}
        world = dist.get_world_size() if dist.is_initialized() else 1
        layout = (f"TP={probe.parallel.tensor_model_parallel_size} PP={probe.parallel.pipeline_model_parallel_size} "
                  f"world={world}")
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads/rank)"
        print(f"dpo_step: {probe.model.arch} seq {args.seq_length}, {args.pairs} pairs/step "
              f"({2 * args.pairs} sequences), micro-batch {args.micro_batch_size} pairs, {layout}, {device}; "
              f"{args.steps} alternating rounds")
        print(f"  {'':44s} {'median ms':>10s} {'ratio':>6s} {'min ms':>10s} {'ratio':>6s}")
        rows = [("two SFT steps (P chosen + P rejected rows)", "two_sft"), ("DPO step, live reference model", "dpo_live"),
                ("DPO step, precomputed reference log-probs", "dpo_precomputed"),
                ("reference forward of one step (in live)", "reference_forward")]
        for label, key in rows:
            print(f"  {label:44s} {med[key] * 1e3:10.1f} {med[key] / med['two_sft']:6.2f} "
                  f"{low[key] * 1e3:10.1f} {low[key] / low['two_sft']:6.2f}")
        print(f"  precompute, once for the {args.pairs * (2 * steps_total + 2)} pairs of the set: "
              f"{med['precompute_total']:.2f} s")
    destroy_parallel()
    if tmp is not None:
        tmp.cleanup()
    return 0


def load_tokenizer_for(cfg):
    from megactllm.tokenizer import load_tokenizer

    return load_tokenizer(cfg.data.tokenizer_type, cfg.data.tokenizer_model)


if __name__ == "__main__":
    sys.exit(main())
