"""What the training stages share: a real tokenizer, a random corpus, the config overrides of a run."""
from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

_WORDS = ("the model reads text and learns which token comes next while the loss goes down over many steps "
          "tensor pipeline data parallel layers heads groups vocabulary embedding rotary norm checkpoint").split()


@dataclass
class Shapes:
    """Model and run sizes of one mode: tiny ones on CPU, the real ones on a GPU."""

    gpu: bool
    tiny_hidden: int
    tiny_layers: int
    tiny_heads: int
    tiny_seq: int
    big_arch: str  # the throughput stage's model
    big_seq: int
    big_overrides: tuple
    timed_steps: int
    warmup_steps: int
    global_batch: int


def shapes(gpu: bool) -> Shapes:
    if gpu:
        return Shapes(True, 256, 4, 4, 256, "ctllm-2b", 4096, (), 10, 3, 8)
    # CPU: a model of a few hundred thousand parameters; the "big" one is the same tiny shape.
    tiny = ("model.hidden_size=64", "model.ffn_hidden_size=176", "model.num_attention_heads=4", "model.num_layers=2")
    return Shapes(False, 64, 2, 4, 32, "tiny", 64, tiny, 2, 1, 2)


def train_sentencepiece(path: Path, vocab_size: int = 256) -> Path:
    """A real SentencePiece BPE model from synthetic sentences: nothing to download on an offline node."""
    import sentencepiece as spm

    rng = random.Random(0)
    sentences = [" ".join(rng.choice(_WORDS) for _ in range(12)) for _ in range(1000)]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buffer, vocab_size=vocab_size,
                                   model_type="bpe", character_coverage=1.0, minloglevel=2)
    path.write_bytes(buffer.getvalue())
    return path


def random_corpus(prefix: str, vocab: int, tokens: int) -> str:
    """Random EOD-terminated documents as a Megatron indexed dataset (bench/train_step.py's writer)."""
    from bench.train_step import write_random_corpus

    if not os.path.exists(prefix + ".idx"):
        write_random_corpus(prefix, vocab, tokens)
    return prefix


def run_overrides(work: Path, name: str, data: str, arch: str, seq: int, iters: int, gbs: int, mbs: int = 1,
                  extra=()) -> list[str]:
    """section.key=value overrides of one training run in work/name."""
    run = work / name
    return [
        f"model.arch={arch}", f"model.seq_length={seq}", f"model.max_position_embeddings={seq}",
        f"data.data_path=[{data}]", "data.split=100,0,0", f"data.data_cache_path={work}/cache",
        f"train.micro_batch_size={mbs}", f"train.global_batch_size={gbs}", f"train.duration={iters} iterations",
        "validation.interval=0", "validation.iters=0", "logging.interval=1000000", f"logging.dir={run}/log",
        *extra,
    ]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
