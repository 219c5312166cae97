"""SFT preprocessing: json/jsonl records -> chat-template tokens + loss masks -> indexed dataset.

The chat format is the tokenizer's own (ChatML for ours and Qwen's, Llama-3's for a Llama-3
tokenizer); the loss covers each assistant turn's content and its end token only.

Truncation policy (stated here, counted in the report and the dataset's sidecar): a sample keeps at
most `seq_length + 1` tokens, which fill exactly `seq_length` training positions after the
input/label shift. A longer conversation is cut from the right (later turns go first); when the cut
leaves no trained (assistant) token, the sample is dropped and counted.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from megactllm.data.chat.sft_indexed import ChatSampleWriter
from megactllm.data.chat.records import (
    BadRecordLog,
    RecordError,
    iter_input_records,
    sft_conversation,
)
from megactllm.tokenizer.chat_formats import ChatFormatError, ChatTokenizationError, chat_format_of


@dataclass
class PreprocessReport:
    records: int = 0
    written: int = 0
    truncated: int = 0
    dropped_after_truncation: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    bad: BadRecordLog = field(default_factory=BadRecordLog)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("records", "written", "truncated", "dropped_after_truncation", "tokens", "trained_tokens")}
        d["bad_records"] = self.bad.summary()
        return d

    def text(self, output: str) -> str:
        lines = [
            f"{output}: {self.written} samples written from {self.records} records in {self.seconds:.1f}s",
            f"  tokens {self.tokens}, trained (assistant) tokens {self.trained_tokens}",
            f"  truncated {self.truncated}, dropped after truncation (no trained token left) {self.dropped_after_truncation}",
            f"  bad records {self.bad.total}",
        ]
        return "\n".join(lines + self.bad.lines())


def truncate_sample(tokens: np.ndarray, mask: np.ndarray, max_tokens: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Right-truncate to max_tokens; None when no trained label remains (labels are tokens[1:])."""
    tokens, mask = tokens[:max_tokens], mask[:max_tokens]
    if not mask[1:].any():
        return None
    return tokens, mask


def preprocess_sft(
    inputs: list[str],
    output_prefix: str,
    tokenizer,
    seq_length: int,
    language: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> PreprocessReport:
    """Writes `output_prefix`.bin/.idx/.json; returns the counts (also stored in the .json sidecar)."""
    chat_format = chat_format_of(tokenizer)  # the tokenizer's own: ChatML, Llama-3
    report = PreprocessReport()
    start = time.time()
    meta = {"chat_template": chat_format.name, "seq_length": seq_length, "language": language, "sources": list(inputs)}
    meta.update(tokenizer.describe())
    with ChatSampleWriter(output_prefix, "sft", tokenizer.vocab_size, meta) as writer:
        for location, record in iter_input_records(inputs):
            report.records += 1
            if progress and report.records % 10000 == 0:
                progress(report.records)
            try:
                if isinstance(record, RecordError):
                    raise record
                sample = chat_format.tokenize(tokenizer, sft_conversation(record))
            except (RecordError, ChatFormatError, ChatTokenizationError) as e:
                report.bad.add(location, str(e))
                continue
            tokens, mask = sample.tokens, sample.loss_mask
            if len(tokens) > seq_length + 1:
                report.truncated += 1
                kept = truncate_sample(tokens, mask, seq_length + 1)
                if kept is None:
                    report.dropped_after_truncation += 1
                    continue
                tokens, mask = kept
            writer.add(tokens, mask)
            report.written += 1
            report.tokens += len(tokens)
            report.trained_tokens += int(mask[1:].sum())
        report.seconds = time.time() - start
        writer.metadata["preprocess"] = report.as_dict()
    return report
