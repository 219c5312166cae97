"""What every stage is handed: where to write, CPU or GPU, the data found on this machine."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bench.gpu_check.setup_run import Shapes, random_corpus, shapes, train_sentencepiece


@dataclass
class Context:
    repo: Path
    work: Path               # scratch space (checkpoints, corpora, exports)
    gpu: bool
    minutes: float
    cmmlu: Optional[Path]    # CMMLU csv directory (dev/ and test/), if present
    eval_tokenizer: Optional[Path]  # a real SentencePiece model for the eval stage's random LLaMA
    wheels: Optional[Path] = None   # scripts/offline_wheels.sh's directory: build requirements (pybind11) from it
    cache: dict = field(default_factory=dict)

    @property
    def shapes(self) -> Shapes:
        return shapes(self.gpu)

    def tokenizer(self) -> Path:
        if "tokenizer" not in self.cache:
            self.cache["tokenizer"] = train_sentencepiece(self.work / "tiny_sp.model")
        return self.cache["tokenizer"]

    def tiny_corpus(self) -> str:
        """Random documents over the tiny tokenizer's ids (so the checkpoint exports with it)."""
        return random_corpus(str(self.work / "tiny_corpus"), 256, 200_000)

    def big_corpus(self, vocab: int) -> str:
        s = self.shapes
        tokens = (2 * (s.warmup_steps + s.timed_steps) + 4) * s.global_batch * (s.big_seq + 1) * 2
        return random_corpus(str(self.work / f"big_corpus_{vocab}"), vocab, tokens)
