"""A Hugging Face model directory through transformers, answering requests in batches.

Speed comes from three things lm-eval's HFLM does not do together: (1) each prefix (few-shot
examples + question) is run once for all of its choices, its key/value cache reused for
continuations longer than one token; (2) the output layer runs only at the positions that are
scored (`logits_to_keep`), not over the whole prompt, which at 5-shot is most of the work;
(3) prefixes are batched longest first with left padding, so a batch holds similar lengths.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional, Sequence

import torch

from megactllm.eval.backends.base import Backend, Progress, batches_of_groups, cut_at_stop
from megactllm.eval.errors import EvalSetupError
from megactllm.eval.requests import TokenRequest, group_by_prefix

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


class HFBackend(Backend):
    name = "hf"

    def __init__(self, model_dir, dtype: str = "fp32", batch_size: int = 8, max_length: Optional[int] = None,
                 device: Optional[str] = None, token_budget: int = 16384):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype], local_files_only=True)
        except (OSError, ValueError) as exc:  # transformers' words for a directory it cannot load
            reason = " ".join(str(exc).split())
            raise EvalSetupError(f"{path}: transformers cannot load this model directory: {reason}") from exc
        self.model.to(self.device).eval()
        config = self.model.config
        self.max_length = max_length or getattr(config, "max_position_embeddings", None) or 2048
        self.batch_size, self.token_budget = batch_size, token_budget
        # Rows past the tokenizer's ids are padding (config vocab_size may exceed them, as Qwen2.5's):
        # never scored or generated.
        self.vocab_limit = len(self.tokenizer)
        self.padding_ids = list(range(self.vocab_limit, int(getattr(config, "vocab_size", 0) or 0)))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # transformers 5 renamed the key/value cache argument `past_key_values` -> `cache`.
        self.cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    # ------------------------------------------------------------------ text
    def encode(self, text: str) -> list[int]:
        # The tokenizer's own defaults (a LLaMA tokenizer adds BOS), as lm-eval's HFLM encodes.
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def bos_token_id(self) -> Optional[int]:
        return self.tokenizer.bos_token_id

    @property
    def eos_token_id(self) -> Optional[int]:
        return self.tokenizer.eos_token_id

    # ------------------------------------------------------------------ scoring
    def _left_padded(self, rows: list[Sequence[int]]):
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _unpadded(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits with the padding rows (ids past the tokenizer's) at -inf."""
        if logits.shape[-1] <= self.vocab_limit:
            return logits
        keep = torch.arange(logits.shape[-1], device=logits.device) < self.vocab_limit
        return logits.masked_fill(~keep, float("-inf"))

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[TokenRequest], progress: Progress = None) -> list[tuple[float, bool]]:
        results: list = [None] * len(requests)
        groups = group_by_prefix(requests, self.max_length)
        for batch in batches_of_groups(groups, self.batch_size, self.token_budget):
            need_cache = not all(g.single_token for g in batch)
            ids, mask, positions = self._left_padded([g.prefix for g in batch])
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                             use_cache=need_cache, logits_to_keep=1)
            first = torch.log_softmax(self._unpadded(out.logits[:, -1].float()), dim=-1)  # predicts each continuation's first token
            longer = []
            for row, group in enumerate(batch):
                best = int(first[row].argmax())
                for index, cont in group.members:
                    results[index] = [float(first[row, cont[0]]), best == cont[0]]
                    if len(cont) > 1:
                        longer.append((row, index, cont))
            if longer:
                self._score_rest(getattr(out, self.cache_arg), mask, longer, results)
            if progress:
                progress(sum(len(g.members) for g in batch))
        return [(ll, bool(greedy)) for ll, greedy in results]

    def _score_rest(self, cache, prefix_mask, longer, results) -> None:
        """Continuation tokens after the first: the prefix cache is copied per continuation
        (index_select over the batch) and only continuation[:-1] is fed."""
        rows = torch.tensor([row for row, _, _ in longer], device=self.device)
        cache.reorder_cache(rows)
        width = max(len(c) for _, _, c in longer) - 1
        ids = torch.full((len(longer), width), self.pad_id, dtype=torch.long)
        cont_mask = torch.zeros((len(longer), width), dtype=torch.long)
        for i, (_, _, cont) in enumerate(longer):
            ids[i, : len(cont) - 1] = torch.tensor(cont[:-1])
            cont_mask[i, : len(cont) - 1] = 1
        start = prefix_mask.sum(-1)[rows].unsqueeze(1)  # each row's prefix length: next position
        positions = start + torch.arange(width, device=self.device).unsqueeze(0)
        mask = torch.cat([prefix_mask[rows], cont_mask.to(self.device)], dim=1)
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask, position_ids=positions,
                            use_cache=True, **{self.cache_arg: cache}).logits
        logprobs = torch.log_softmax(self._unpadded(logits.float()), dim=-1)
        for i, (_, index, cont) in enumerate(longer):
            targets = torch.tensor(cont[1:], device=self.device)
            picked = logprobs[i, : len(cont) - 1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            results[index][0] += float(picked.sum())
            results[index][1] = results[index][1] and bool((logprobs[i, : len(cont) - 1].argmax(-1) == targets).all())

    # ------------------------------------------------------------------ generation
    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Prompt ids through the tokenizer's own chat template, ending with the open assistant turn."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise EvalSetupError(f"{self.path}: the tokenizer has no chat template; generation tasks need a chat model")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def _chat_format(self):
        """The tokenizer's chat format (ChatML, Llama-3); ChatML's stop for a base tokenizer, as before."""
        from megactllm.tokenizer.chat_formats import CHATML, chat_format_of

        return chat_format_of(self.tokenizer, required=False) or CHATML

    def chat_stop_strings(self) -> list[str]:
        return [t for t in (*self._chat_format().stop_tokens, self.tokenizer.eos_token) if t]

    def _stop_ids(self) -> list[int]:
        """Generation ends at EOS or at the chat turn's end token (a special token, gone once decoded)."""
        ids = [self.tokenizer.eos_token_id] + self._chat_format().stop_token_ids(self.tokenizer)
        return [i for i in ids if i is not None]

    @torch.no_grad()
    def greedy_generate(self, contexts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        out: list[str] = [""] * len(contexts)
        order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
        for b in range(0, len(order), self.batch_size):
            chunk = order[b: b + self.batch_size]
            rows = [list(contexts[i])[-(self.max_length - max_new_tokens):] for i in chunk]
            ids, mask, _ = self._left_padded(rows)
            generated = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                            do_sample=False, pad_token_id=self.pad_id, eos_token_id=self._stop_ids(),
                                            suppress_tokens=self.padding_ids or None)
            for i, seq in zip(chunk, generated[:, ids.shape[1]:].tolist()):
                out[i] = cut_at_stop(self.decode(seq), stop)
        return out


