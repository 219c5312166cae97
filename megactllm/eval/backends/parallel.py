"""The parallel model (megatron-core GPTModel chunks at any TP/PP/VPP/DP layout) as a backend.

    initialize_parallel(ParallelConfig(tensor_model_parallel_size=2, ...))
    backend = ParallelBackend.from_checkpoint("runs/ctllm/iter_0001000", parallel)   # or live chunks
    backend.loglikelihood(requests)     # every rank gets the full answer list

Each prefix group (one question: a shared prefix and its choices) becomes one row when all its
continuations are single tokens, else one row per choice. Rows are sharded over data-parallel
ranks; each replica runs its rows through megatron-core's pipeline schedule (forward only);
the last stage computes log-probabilities of the scored tokens with a vocabulary-parallel
log-softmax (padding rows of the vocabulary excluded, so the numbers equal the exported model's);
the answers are gathered on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from megactllm.eval.backends.base import Backend, Progress, cut_at_stop
from megactllm.eval.requests import TokenRequest, group_by_prefix


@dataclass
class _Row:
    tokens: list[int]
    queries: list[tuple[int, int, int]]  # (request index, position whose output predicts, target id)


def _rows(requests: Sequence[TokenRequest], max_length: int) -> list[_Row]:
    rows = []
    for group in group_by_prefix(requests, max_length):
        last = len(group.prefix) - 1
        if group.single_token:
            rows.append(_Row(list(group.prefix), [(i, last, cont[0]) for i, cont in group.members]))
            continue
        for i, cont in group.members:
            rows.append(_Row(list(group.prefix) + list(cont[:-1]), [(i, last + k, t) for k, t in enumerate(cont)]))
    return rows


class ParallelBackend(Backend):
    name = "parallel"

    def __init__(self, model_chunks: list, model_config, tokenizer, batch_size: int = 8,
                 max_length: Optional[int] = None, micro_batch_size: Optional[int] = None):
        from megatron.core import parallel_state as ps

        from megactllm.tokenizer.bos import sentencepiece_adds_bos
        from megactllm.tokenizer.huggingface_tokenizer import HuggingFaceTokenizer

        self.chunks, self.model_config, self.tokenizer = model_chunks, model_config, tokenizer
        # A LLaMA-2/Mistral original adds BOS (its tokenizer_config.json, copied by the import).
        self.add_bos = not isinstance(tokenizer, HuggingFaceTokenizer) and sentencepiece_adds_bos(tokenizer.model_path)
        # Ids past the tokenizer's are padding rows (and the layout's): never scored or chosen.
        self.vocab_limit = min(model_config.vocab_size, tokenizer.vocab_size)
        self.batch_size = batch_size
        self.max_length = max_length or model_config.max_position_embeddings or model_config.seq_length
        self.pp = ps.get_pipeline_model_parallel_world_size()
        self.tp = ps.get_tensor_model_parallel_world_size()
        # Without a pipeline one micro-batch holds the whole batch; with one, micro-batches of 1 keep it busy.
        self.micro_batch_size = micro_batch_size or (batch_size if self.pp == 1 else 1)
        self.dp_rank, self.dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        self.is_last_stage = ps.is_pipeline_last_stage(ignore_virtual=True)
        self.is_reporting_rank = dist.get_rank() == 0
        self.device = next(model_chunks[0].parameters()).device

    @classmethod
    def from_checkpoint(cls, path, parallel, batch_size: int = 8, max_length: Optional[int] = None) -> "ParallelBackend":
        """Build this rank's chunks for the checkpoint's own ModelConfig and load its weights
        (any saved layout into the current one); the tokenizer is the checkpoint's copy."""
        from megactllm.model import build_model
        from megactllm.tokenizer import load_tokenizer
        from megactllm.checkpoint import CheckpointError, Checkpointer, read_metadata

        meta = read_metadata(path)
        if meta.tokenizer_file is None or not meta.tokenizer_file.is_file():
            raise CheckpointError(f"{meta.path} carries no tokenizer copy; evaluation needs the model's own tokenizer")
        chunks = build_model(meta.model_config, parallel)
        Checkpointer.load_weights(meta.path, chunks, meta.model_config)
        tokenizer = load_tokenizer(meta.tokenizer.get("type", "sentencepiece"), str(meta.tokenizer_file))
        return cls(chunks, meta.model_config, tokenizer, batch_size=batch_size, max_length=max_length)

    # ------------------------------------------------------------------ text
    def encode(self, text: str) -> list[int]:
        """Ids as lm-eval's tok_encode gives them: the tokenizer's own defaults. A tokenizer.json's
        post-processor may add BOS (Llama-3's <|begin_of_text|>), which megactllm's encode (for
        training data) leaves out; a SentencePiece model adds BOS where its HF original's
        tokenizer_config.json says so (megactllm's own add none, as their export says)."""
        from megactllm.tokenizer.huggingface_tokenizer import HuggingFaceTokenizer

        if isinstance(self.tokenizer, HuggingFaceTokenizer):
            return self.tokenizer.hf.encode(text, add_special_tokens=True).ids
        ids = self.tokenizer.encode(text)
        return [self.tokenizer.bos_id] + ids if self.add_bos and self.tokenizer.bos_id is not None else ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    @property
    def bos_token_id(self) -> Optional[int]:
        return self.tokenizer.bos_id

    @property
    def eos_token_id(self) -> Optional[int]:
        return self.tokenizer.eod_id

    # ------------------------------------------------------------------ forward
    def _run(self, rows: list[_Row], reduce=None) -> list[torch.Tensor]:
        """Forward `rows` (one batch) through the schedule; on the last stage, per row what `reduce`
        (default: _score, a [queries, 2] tensor of (log-prob, is greedy)) makes of its logits;
        elsewhere an empty list."""
        reduce = reduce or self._score
        from megatron.core.pipeline_parallel import get_forward_backward_func

        mbs = self.micro_batch_size
        padded = rows + [_Row([0], [])] * (-len(rows) % mbs)  # whole micro-batches; dummies score nothing
        width = max(len(r.tokens) for r in padded)
        width += -width % self.tp  # sequence parallelism splits the sequence over TP ranks
        tokens = torch.zeros((len(padded), width), dtype=torch.long)
        for i, r in enumerate(padded):
            tokens[i, : len(r.tokens)] = torch.tensor(r.tokens)  # right padding: causal attention never reads it
        tokens = tokens.to(self.device)
        positions = torch.arange(width, device=self.device).unsqueeze(0).expand(mbs, -1)

        def forward_step(data_iterator, model):
            start = next(data_iterator)
            output = model(tokens[start: start + mbs], positions, None)
            return output, lambda logits: (torch.zeros((), device=self.device),
                                           {"scores": reduce(logits, padded[start: start + mbs])})

        iterators = [iter(range(0, len(padded), mbs)) for _ in self.chunks]
        out = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iterators if len(self.chunks) > 1 else iterators[0],
            model=self.chunks if len(self.chunks) > 1 else self.chunks[0],
            num_microbatches=len(padded) // mbs,
            seq_length=width,
            micro_batch_size=mbs,
            forward_only=True,
        )
        if not self.is_last_stage:
            return []
        return [scores for o in out for scores in o["scores"]][: len(rows)]

    def _score(self, logits: torch.Tensor, rows: list[_Row]) -> list[torch.Tensor]:
        """Vocabulary-parallel log p(target) at each query position, over the unpadded vocabulary."""
        from megatron.core import parallel_state as ps

        group = ps.get_tensor_model_parallel_group()
        local = logits.shape[-1]
        first = ps.get_tensor_model_parallel_rank() * local
        rows_idx = [b for b, r in enumerate(rows) for _ in r.queries]
        pos_idx = [p for r in rows for _, p, _ in r.queries]
        targets = torch.tensor([t for r in rows for _, _, t in r.queries], device=logits.device)
        if not rows_idx:
            return [torch.zeros((0, 2)) for _ in rows]
        x = logits[rows_idx, pos_idx].float()                                  # [queries, local vocab]
        beyond = torch.arange(first, first + local, device=x.device) >= self.vocab_limit
        x = x.masked_fill(beyond, float("-inf"))
        top = x.max(-1).values
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        sumexp = (x - top.unsqueeze(-1)).exp().sum(-1)
        dist.all_reduce(sumexp, group=group)
        mine = (targets >= first) & (targets < first + local)
        picked = torch.where(mine, x.gather(-1, (targets - first).clamp(0, local - 1).unsqueeze(-1)).squeeze(-1),
                             torch.zeros_like(top))
        dist.all_reduce(picked, group=group)
        logprob = picked - top - sumexp.log()
        both = torch.stack([logprob, (picked >= top).float()], dim=-1).cpu()
        out, at = [], 0
        for r in rows:
            out.append(both[at: at + len(r.queries)])
            at += len(r.queries)
        return out

    def _modes(self, train: bool) -> None:
        for chunk in self.chunks:
            chunk.train(train)

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[TokenRequest], progress: Progress = None) -> list[tuple[float, bool]]:
        was_training = self.chunks[0].training
        self._modes(False)
        try:
            rows = _rows(requests, self.max_length)
            mine = rows[self.dp_rank:: self.dp_size]  # rows are longest first: striding balances the replicas
            answers: dict[int, list] = {}
            for b in range(0, len(mine), self.batch_size):
                batch = mine[b: b + self.batch_size]
                scores = self._run(batch)
                for row, s in zip(batch, scores):
                    for (index, _, _), (lp, greedy) in zip(row.queries, s.tolist()):
                        entry = answers.setdefault(index, [0.0, True])
                        entry[0] += lp
                        entry[1] = entry[1] and greedy > 0.5
                if progress:
                    # every replica advances alike; count this replica's questions times the replicas
                    progress(sum(len({q[0] for q in r.queries}) for r in batch) * self.dp_size)
        finally:
            self._modes(was_training)
        merged = self._gather(answers)
        missing = [i for i in range(len(requests)) if i not in merged]
        if missing:
            raise RuntimeError(f"parallel backend lost {len(missing)} request(s), e.g. index {missing[0]}")
        return [(float(merged[i][0]), bool(merged[i][1])) for i in range(len(requests))]

    def _gather(self, answers: dict) -> dict:
        holds = self._holds()
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, answers if holds else {})
        merged: dict = {}
        for p in parts:
            merged.update(p)
        return merged

    # ------------------------------------------------------------------ generation
    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """The tokenizer's chat format, ChatML or Llama-3's (the exported model's chat template gives the same ids)."""
        from megactllm.tokenizer.chat_formats import chat_format_of

        return chat_format_of(self.tokenizer).generation_prompt_tokens(self.tokenizer, messages)

    def chat_stop_strings(self) -> list[str]:
        from megactllm.tokenizer.chat_formats import chat_format_of

        return list(chat_format_of(self.tokenizer).stop_tokens)

    def _argmax(self, logits: torch.Tensor, rows: list[_Row]) -> list[torch.Tensor]:
        """Vocabulary-parallel greedy next token at each row's first query position."""
        from megatron.core import parallel_state as ps

        local = logits.shape[-1]
        first = ps.get_tensor_model_parallel_rank() * local
        positions = [r.queries[0][1] if r.queries else 0 for r in rows]
        x = logits[list(range(len(rows))), positions].float()
        beyond = torch.arange(first, first + local, device=x.device) >= self.vocab_limit
        values, ids = x.masked_fill(beyond, float("-inf")).max(-1)
        group = ps.get_tensor_model_parallel_group()
        all_values = [torch.empty_like(values) for _ in range(self.tp)]
        all_ids = [torch.empty_like(ids) for _ in range(self.tp)]
        dist.all_gather(all_values, values.contiguous(), group=group)
        dist.all_gather(all_ids, (ids + first).contiguous(), group=group)
        values, ids = torch.stack(all_values), torch.stack(all_ids)   # [tp, rows]
        best = values.argmax(0)  # first maximum: the lowest id, as a single-device argmax
        return [ids[best[i], i].reshape(1).cpu() for i in range(len(rows))]

    @torch.no_grad()
    def greedy_generate(self, contexts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        """Greedy decoding by repeated forward passes (no cache: the schedule runs whole sequences).
        Fine for the few tokens an answer letter needs; use the HF backend for long generations."""
        from megatron.core import parallel_state as ps

        was_training = self.chunks[0].training
        self._modes(False)
        texts: dict[int, str] = {}
        try:
            order = list(range(len(contexts)))[self.dp_rank:: self.dp_size]
            for b in range(0, len(order), self.batch_size):
                chunk = order[b: b + self.batch_size]
                seqs = [list(contexts[i])[-(self.max_length - max_new_tokens):] for i in chunk]
                for _ in range(max_new_tokens):
                    rows = [_Row(list(s), [(0, len(s) - 1, 0)]) for s in seqs]
                    found = self._run(rows, self._argmax)
                    nxt = torch.cat(found).to(self.device) if found else torch.zeros(len(rows), dtype=torch.long, device=self.device)
                    # the last stage knows the next tokens; every rank of this replica needs them
                    dist.all_reduce(nxt, op=dist.ReduceOp.MAX, group=ps.get_model_parallel_group())
                    for s, t in zip(seqs, nxt.tolist()):
                        s.append(int(t))
                for i, s in zip(chunk, seqs):
                    texts[i] = cut_at_stop(self.decode(s[len(s) - max_new_tokens:]), stop)
        finally:
            self._modes(was_training)
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, texts if dist.get_rank() == 0 or self._holds() else {})
        merged: dict = {}
        for p in parts:
            merged.update(p)
        return [merged[i] for i in range(len(contexts))]

    def _holds(self) -> bool:
        from megatron.core import parallel_state as ps

        return self.is_last_stage and ps.get_tensor_model_parallel_rank() == 0
