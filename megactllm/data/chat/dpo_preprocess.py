"""DPO preprocessing: preference records -> prompt+chosen / prompt+rejected tokens -> indexed dataset.

Both halves are rendered with the one chat template from the same prompt turns, so they share the
prompt's tokens exactly; only the response (its content and closing end token, <|im_end|> or
Llama-3's <|eot_id|>) is masked in. The chat format is the tokenizer's own.

Truncation policy (counted): each half keeps at most `seq_length + 1` tokens. When a half is longer,
the prompt is first cut from the left (oldest tokens go) down to at most half of that budget, then
the responses are cut from the right to the budget left. Both halves always keep the same prompt.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from megactllm.data.chat.sft_indexed import ChatSampleWriter
from megactllm.data.chat.records import BadRecordLog, RecordError, dpo_pair, iter_input_records
from megactllm.tokenizer.chat_formats import ChatFormatError, ChatTokenizationError, chat_format_of


@dataclass
class DPOPreprocessReport:
    records: int = 0
    written: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    tokens: int = 0
    bad: BadRecordLog = field(default_factory=BadRecordLog)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("records", "written", "prompt_truncated", "response_truncated", "tokens")}
        d["bad_records"] = self.bad.summary()
        return d

    def text(self, output: str) -> str:
        lines = [
            f"{output}: {self.written} pairs written from {self.records} records in {self.seconds:.1f}s, {self.tokens} tokens",
            f"  prompts cut from the left {self.prompt_truncated}, responses cut from the right {self.response_truncated}",
            f"  bad records {self.bad.total}",
        ]
        return "\n".join(lines + self.bad.lines())


@dataclass
class TokenizedPair:
    prompt: np.ndarray
    chosen: np.ndarray  # response tokens (content, end token, and ChatML's newline)
    chosen_mask: np.ndarray
    rejected: np.ndarray
    rejected_mask: np.ndarray

    def halves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        zeros = np.zeros(len(self.prompt), np.uint8)
        return (
            np.concatenate([self.prompt, self.chosen]),
            np.concatenate([zeros, self.chosen_mask]),
            np.concatenate([self.prompt, self.rejected]),
            np.concatenate([zeros, self.rejected_mask]),
        )


def tokenize_pair(tokenizer, prompt: list[dict], chosen: str, rejected: str, chat_format=None) -> TokenizedPair:
    chat_format = chat_format or chat_format_of(tokenizer)
    c = chat_format.tokenize(tokenizer, prompt + [{"role": "assistant", "content": chosen}])
    r = chat_format.tokenize(tokenizer, prompt + [{"role": "assistant", "content": rejected}])
    # The prompt is everything up to the open assistant header of the response; the assistant turns of
    # a multi-turn prompt are context, not trained (their mask is cut off with the prompt).
    prompt_ids = chat_format.generation_prompt_tokens(tokenizer, prompt)
    start = len(prompt_ids)
    if c.tokens[:start].tolist() != prompt_ids or r.tokens[:start].tolist() != prompt_ids:
        raise ChatTokenizationError("chosen and rejected halves do not share the prompt's tokens")
    return TokenizedPair(c.tokens[:start], c.tokens[start:], c.loss_mask[start:], r.tokens[start:], r.loss_mask[start:])


def truncate_pair(pair: TokenizedPair, max_tokens: int) -> tuple[TokenizedPair, bool, bool]:
    """The pair fitted to max_tokens per half; also whether the prompt / a response was cut."""
    longest = max(len(pair.chosen), len(pair.rejected))
    prompt = pair.prompt
    prompt_cut = len(prompt) + longest > max_tokens and len(prompt) > max_tokens // 2
    if prompt_cut:
        prompt = prompt[len(prompt) - max(max_tokens - longest, max_tokens // 2):]
    room = max_tokens - len(prompt)
    response_cut = longest > room
    fitted = TokenizedPair(prompt, pair.chosen[:room], pair.chosen_mask[:room], pair.rejected[:room], pair.rejected_mask[:room])
    return fitted, prompt_cut, response_cut


def preprocess_dpo(inputs: list[str], output_prefix: str, tokenizer, seq_length: int, language: str | None = None) -> DPOPreprocessReport:
    """Writes `output_prefix`.bin/.idx/.json of DPO pairs; returns the counts (also in the sidecar)."""
    chat_format = chat_format_of(tokenizer)  # the tokenizer's own: ChatML, Llama-3
    report = DPOPreprocessReport()
    start = time.time()
    meta = {"chat_template": chat_format.name, "seq_length": seq_length, "language": language, "sources": list(inputs)}
    meta.update(tokenizer.describe())
    with ChatSampleWriter(output_prefix, "dpo", tokenizer.vocab_size, meta) as writer:
        for location, record in iter_input_records(inputs):
            report.records += 1
            try:
                if isinstance(record, RecordError):
                    raise record
                pair = tokenize_pair(tokenizer, *dpo_pair(record), chat_format=chat_format)
            except (RecordError, ChatFormatError, ChatTokenizationError) as e:
                report.bad.add(location, str(e))
                continue
            pair, prompt_cut, response_cut = truncate_pair(pair, seq_length + 1)
            report.prompt_truncated += prompt_cut
            report.response_truncated += response_cut
            halves = pair.halves()
            writer.add(*halves)
            report.written += 1
            report.tokens += len(halves[0]) + len(halves[2])
        report.seconds = time.time() - start
        writer.metadata["preprocess"] = report.as_dict()
    return report
