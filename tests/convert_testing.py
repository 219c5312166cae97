"""Helpers shared by the conversion tests: a tiny tokenizer, tiny models, megactllm logits per layout.

Functions run by run_distributed live here at module top level so spawned ranks can import them.
"""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Optional

import torch

SEQ = 16
REPO_ROOT = Path(__file__).resolve().parents[1]
_WORDS = (
    "the model reads text and learns which token comes next while the loss goes down over many steps "
    "tensor pipeline data parallel layers heads groups vocabulary embedding rotary norm checkpoint"
).split()


def train_tiny_sentencepiece(path: Path, vocab_size: int = 300) -> Path:
    """A real SentencePiece BPE model trained on synthetic sentences (no shared data needed)."""
    import sentencepiece as spm

    rng = random.Random(0)
    sentences = [" ".join(rng.choice(_WORDS) for _ in range(12)) for _ in range(2000)]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        minloglevel=2,
    )
    path.write_bytes(buffer.getvalue())
    return path


def tiny_config(vocab_size: int, tp: int = 1, pp: int = 1, vpp=None, **model):
    """Config of a tiny LLaMA-shaped model at a TP x PP layout (built directly: YAML overrides would
    read a value like 1e-06 as a string)."""
    from megactllm.config import Config, ParallelConfig, model_config_from_dict

    values = dict(arch="tiny", vocab_size=vocab_size, seq_length=SEQ, max_position_embeddings=64, num_layers=4)
    values.update(model)
    parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                              virtual_pipeline_model_parallel_size=vpp)
    return Config(model=model_config_from_dict(values), parallel=parallel)


def megactllm_logits(chunks, tokens: torch.Tensor) -> Optional[torch.Tensor]:
    """Full-vocabulary fp32 logits of our own forward (on the last pipeline stage; None elsewhere).

    One sequence per micro-batch, through megatron-core's pipeline schedule (interleaved with VPP).
    """
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.pipeline_parallel import get_forward_backward_func

    batch, seq = tokens.shape
    position_ids = torch.arange(seq).unsqueeze(0)

    def forward_step(data_iterator, model):
        row = next(data_iterator)
        output = model(tokens[row : row + 1], position_ids, None)

        def keep_logits(out):
            full = tensor_parallel.gather_from_tensor_model_parallel_region(out)
            return full.sum(), {"logits": full.detach().float().clone()}

        return output, keep_logits

    out = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=[iter(range(batch)) for _ in chunks] if len(chunks) > 1 else iter(range(batch)),
        model=chunks if len(chunks) > 1 else chunks[0],
        num_microbatches=batch,
        seq_length=seq,
        micro_batch_size=1,
        forward_only=True,
    )
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return torch.cat([o["logits"] for o in out], dim=0)


def layout_jobs(jobs: list[dict]) -> dict:
    """Run on every rank of one process group: for each job, bring up its TP x PP layout (the rest
    of the world is data parallel), then either save a random model and reload it (`save_to`) or
    load a checkpoint (`load_from`), and compute logits of `tokens`. Returns {job name: logits}
    from the rank that holds them (last stage, TP rank 0, DP rank 0).

    One spawn for several layouts: starting processes costs more than the tiny models.
    Logits come from a freshly loaded model so they reflect exactly what the checkpoint holds
    (with tied embeddings at PP > 1 the last stage's copy of the embedding is not saved).
    """
    from megatron.core import parallel_state

    from megactllm.model import build_model
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.checkpoint import Checkpointer

    results = {}
    for job in jobs:
        cfg = job["cfg"]
        initialize_parallel(cfg.parallel, seed=1234, num_layers=cfg.model.num_layers)
        chunks = build_model(cfg.model, cfg.parallel, cfg.optim)
        if job.get("save_to"):
            Checkpointer(job["save_to"]).save(1, chunks, cfg, tokenizer_path=job.get("tokenizer"))
            chunks = build_model(cfg.model, cfg.parallel, cfg.optim)
        Checkpointer.load_weights(job.get("save_to") or job["load_from"], chunks, cfg.model)
        logits = megactllm_logits(chunks, job["tokens"])
        if logits is not None and parallel_state.get_tensor_model_parallel_rank() == 0 \
                and parallel_state.get_data_parallel_rank() == 0:
            results[job["name"]] = logits
        parallel_state.destroy_model_parallel()
    destroy_parallel()
    return results


def merge_rank_results(per_rank: list[dict]) -> dict:
    merged = {}
    for result in per_rank:
        merged.update(result)
    return merged


def hf_logits(model_dir, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True)
    model.eval()
    with torch.no_grad():
        return model(tokens).logits.float()


def tiny_hf_llama(vocab_size: int, seed: int = 0, **config):
    """A random LlamaForCausalLM small enough for CPU tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    values = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    )
    values.update(config)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**values))
    # Random (not constant) norm weights, so a swapped norm would show in the logits.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model.eval()


def extend_sentencepiece_proto(source: Path, target: Path, pieces: list[tuple[str, str]]) -> Path:
    """Append pieces ((piece, "normal" | "user_defined")) to a SentencePiece model, as vocabulary
    extension does: old ids unchanged, new ids after them."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(source).read_bytes())
    kinds = {"normal": proto.SentencePiece.NORMAL, "user_defined": proto.SentencePiece.USER_DEFINED}
    lowest = min(p.score for p in proto.pieces)
    for i, (piece, kind) in enumerate(pieces):
        added = proto.pieces.add()
        added.piece, added.type = piece, kinds[kind]
        added.score = 0.0 if kind == "user_defined" else lowest - 1 - i
    Path(target).write_bytes(proto.SerializeToString())
    return Path(target)


def read_hf_weights(model_dir) -> dict:
    """All tensors of an HF directory (sharded or not), with the reference safetensors reader."""
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def continue_pretraining(checkpoint: str, data_prefix: str, tokenizer: str, save_dir: str, seq: int):
    """One training iteration of megactllm.train's loop from an imported checkpoint, lr 0."""
    import dataclasses

    from megactllm.config import (
        Config,
        DataConfig,
        OptimConfig,
        ParallelConfig,
        CheckpointConfig,
        LoggingConfig,
        TrainConfig,
        ValidationConfig,
    )
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.checkpoint import read_metadata
    from megactllm.training.trainer import run_training

    model = dataclasses.replace(read_metadata(checkpoint).model_config, seq_length=seq)
    cfg = Config(
        model=model,
        parallel=ParallelConfig(),
        data=DataConfig(data_path=[data_prefix], split="100,0,0", tokenizer_type="sentencepiece", tokenizer_model=tokenizer),
        # lr 0: the step must leave the imported weights exactly as they were
        optim=OptimConfig(lr=0.0, min_lr=0.0, weight_decay=0.0, lr_decay_style="constant"),
        train=TrainConfig(duration="1 iterations", micro_batch_size=1, global_batch_size=2),
        checkpoint=CheckpointConfig(save=save_dir, interval=1, pretrained=checkpoint),
        validation=ValidationConfig(iters=0),
        logging=LoggingConfig(interval=1),
    )
    initialize_parallel(cfg.parallel, seed=1, num_layers=model.num_layers)
    result = run_training(cfg)
    destroy_parallel()
    return result.state.iteration, result.losses, result.last_checkpoint
