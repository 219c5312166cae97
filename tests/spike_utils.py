"""Shared pieces of the spike tests: real Chinese text (the shared corpus, MAP-NEO tokenizer) and
random-token documents whose ids the real text never uses, so a sample says which one it is."""
from __future__ import annotations

import hashlib
import json

import numpy as np

SEQ = 128


def write_real_and_random(root: str, sp_model: str, corpus_txt: str, documents: int = 400) -> dict:
    """{prefix: ...} for "real" (tokenized text) and "random" (uniform ids outside real's), and the
    real corpus's token set size; both with the tokenizer's EOD and vocabulary in their sidecars."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megactllm.tokenizer import load_tokenizer

    tok = load_tokenizer("sentencepiece", sp_model)
    lines = [line for line in open(corpus_txt, encoding="utf-8").read().splitlines() if line.strip()][:documents]
    docs = [tok.encode(line)[:200] for line in lines]
    used = sorted({t for d in docs for t in d} | {tok.eod_id})
    unused = np.setdiff1d(np.arange(3, tok.vocab_size), np.array(used))
    rng = np.random.default_rng(7)
    prefixes = {}
    for name, rows in (("real", docs), ("random", [rng.choice(unused, size=120).tolist() for _ in range(60)])):
        prefix = f"{root}/{name}"
        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
        for d in rows:
            builder.add_document(torch.tensor(d + [tok.eod_id]), [len(d) + 1])
        builder.finalize(prefix + ".idx")
        with open(prefix + ".json", "w") as f:
            json.dump({"eod_id": tok.eod_id, "vocab_size": tok.vocab_size}, f)
        prefixes[name] = prefix
    prefixes["real_tokens"] = used
    prefixes["vocab_size"] = tok.vocab_size
    return prefixes


def overrides(data: dict, workdir: str, random_weight: float, **extra) -> list[str]:
    """Micro and global batch 1, a tiny model, constant LR (so a skipped step and a skipped sample compare)."""
    blend = [str(1 - random_weight), data["real"]] + ([str(random_weight), data["random"]] if random_weight else [])
    base = {
        "model.arch": "tiny",
        "model.vocab_size": data["vocab_size"],
        "model.seq_length": SEQ,
        "model.max_position_embeddings": SEQ,
        "data.data_path": json.dumps(blend),
        "data.split": "100,0,0",
        "data.data_cache_path": f"{workdir}/data_cache",
        "train.global_batch_size": 1,
        "train.micro_batch_size": 1,
        "logging.interval": 10,
        "validation.interval": 0,
        "validation.iters": 0,
        "logging.dir": f"{workdir}/log",
        "stability.skip_spiky_steps": "true",
        "stability.spike_window": 32,
        "optim.lr": 2e-3,  # seq 128 at 2e-3: clean loss ~8.5 +- 0.4, grad norm ~1; random tokens ~12
        "optim.min_lr": 2e-3,
        "optim.lr_decay_style": "constant",
        "optim.lr_warmup_iters": 0,
        "optim.weight_decay": 0.0,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def digest(tokens) -> str:
    return hashlib.sha1(np.ascontiguousarray(tokens.cpu().numpy()).tobytes()).hexdigest()[:16]


def train_observed(overrides: list[str], real_tokens: list, poison_positions=(), scale: float = 30.0) -> dict:
    """Rank body: train; per step whether its sample was random tokens, the Adam step counts and
    weights around every skipped step, the final weights. Samples at `poison_positions` (positions in
    the training order) get their loss scaled by `scale` (a bad batch that is not random tokens)."""
    from dataclasses import asdict

    import torch

    from megactllm.config import load_config
    from megactllm.parallel import initialize_parallel
    from megactllm.training.trainer import Trainer
    from megactllm.training.stages.pretrain import PretrainTask

    real = torch.tensor(real_tokens)
    read_random: dict = {}
    poisoned: set = set()

    class Observed(PretrainTask):
        def build_datasets(self, cfg, tokenizer):
            datasets = super().build_datasets(cfg, tokenizer)
            poisoned.update(digest(torch.as_tensor(datasets[0][p]["tokens"])) for p in poison_positions)
            return datasets

        def prepare_global_batch(self, microbatches, model_chunks):
            tokens = microbatches[0]["tokens"]
            self.current = digest(tokens[0])
            read_random[trainer.state.iteration + 1] = bool((~torch.isin(tokens.cpu(), real)).any())
            return microbatches

        def forward_step(self, data_iterator, model):
            output, loss_func = super().forward_step(data_iterator, model)
            if self.current not in poisoned:
                return output, loss_func

            def scaled(output_tensor):
                loss_sum, count, report = loss_func(output_tensor)
                return loss_sum * scale, count, {k: v * torch.tensor([scale, 1.0]) for k, v in report.items()}

            return output, scaled

    cfg = load_config(None, overrides)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    trainer = Trainer(cfg, Observed(cfg))
    unchanged = {}
    original = trainer.train_step

    def adam_steps():
        """Adam's step counts and first moments (torch's optimizers inside megatron's wrappers)."""
        leaves = [leaf.optimizer for leaf in getattr(trainer.optimizer, "chained_optimizers", [trainer.optimizer])]
        states = [s for leaf in leaves for s in leaf.state.values()]
        return sorted({int(s["step"]) for s in states if "step" in s}), [s["exp_avg"].clone() for s in states if "exp_avg" in s]

    def observed_step():
        before = ([p.detach().clone() for p in trainer.model[0].parameters()], adam_steps())
        metrics, outcome = original()
        if not outcome.updated:
            after = [p.detach() for p in trainer.model[0].parameters()]
            unchanged[trainer.state.iteration + 1] = (
                all(torch.equal(a, b) for a, b in zip(before[0], after))
                and before[1][0] == adam_steps()[0]
                and all(torch.equal(a, b) for a, b in zip(before[1][1], adam_steps()[1])))
        return metrics, outcome

    trainer.train_step = observed_step
    result = trainer.fit()
    return {"losses": result.losses, "state": asdict(result.state), "read_random": read_random, "unchanged": unchanged,
            "weights": [p.detach().clone() for p in trainer.model[0].parameters()],
            "callbacks": trainer.callbacks.state_dict()}


def train_plain(overrides: list[str]) -> dict:
    """Rank body: train as `megactllm train` does; the losses, the final train state and callbacks' states."""
    from dataclasses import asdict

    from megactllm.config import load_config
    from megactllm.parallel import initialize_parallel
    from megactllm.training.trainer import Trainer
    from megactllm.training.stages.pretrain import PretrainTask

    cfg = load_config(None, overrides)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    trainer = Trainer(cfg, PretrainTask(cfg))
    result = trainer.fit()
    return {"losses": result.losses, "state": asdict(result.state), "callbacks": trainer.callbacks.state_dict()}
