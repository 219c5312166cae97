"""GGUF models on llama.cpp through llama-cpp-python: its tokenizer, sampler and KV cache."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

from megactllm.serve.engine import (
    Completion,
    Engine,
    EngineError,
    EngineInfo,
    SamplingParams,
    StreamPiece,
    render_chat,
)

# Bytes of logits llama-cpp-python keeps for every position when logits_all is on (needed for
# prompt log-probabilities, i.e. echo+logprobs); on by default only while it stays this small.
_LOGITS_ALL_BUDGET = 512 * 2**20


class LlamaCppEngine(Engine):
    def __init__(self, path: str | Path, n_ctx: int = 0, threads: Optional[int] = None, logits_all: Optional[bool] = None,
                 f32_kv_cache: bool = False, seed: int = 0, name: Optional[str] = None):
        import llama_cpp
        from llama_cpp import Llama

        path = Path(path)
        if not path.is_file():
            raise EngineError(f"{path} does not exist")
        threads = threads or min(os.cpu_count() or 1, 8)
        probe = Llama(model_path=str(path), vocab_only=True, verbose=False)
        n_ctx = n_ctx or int(probe.metadata.get("llama.context_length", 2048))
        if logits_all is None:
            logits_all = n_ctx * probe.n_vocab() * 4 <= _LOGITS_ALL_BUDGET
        del probe
        cache = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) if f32_kv_cache else {}
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                         logits_all=logits_all, seed=seed, verbose=False, **cache)
        md = self.llm.metadata
        # GGUFs from megactllm tell llama.cpp not to add SentencePiece's leading space (so chat
        # prompts tokenize as in training); plain text gets it back here (see convert/gguf/vocab.py).
        self.leading_space = md.get("megactllm.tokenizer.dummy_prefix") == "true" and md.get("tokenizer.ggml.add_space_prefix") == "false"
        self.logits_all = logits_all
        self.info = EngineInfo(name=name or path.stem, kind="llama.cpp", context_length=n_ctx,
                               chat_template=md.get("tokenizer.chat_template"), extra=dict(threads=threads))

    def tokenize(self, text: str) -> list[int]:
        text = (" " + text) if self.leading_space else text
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def chat_tokens(self, messages: Sequence[dict]) -> list[int]:
        special = dict(bos_token=self._piece(self.llm.token_bos()), eos_token=self._piece(self.llm.token_eos()))
        text = render_chat(self.info.chat_template, messages, special)
        # special=False: control tokens typed by a user stay text; user-defined chat tokens are
        # still single tokens (llama.cpp, like SentencePiece, always matches those).
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _piece(self, token_id: int) -> str:
        return "" if token_id < 0 else self.llm._model.token_get_text(token_id)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def _kwargs(self, params: SamplingParams) -> dict:
        from llama_cpp import StoppingCriteriaList

        cancel = params.cancel
        criteria = StoppingCriteriaList([lambda ids, logits: cancel()]) if cancel else None
        return dict(stopping_criteria=criteria, max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                    min_p=0.0, repeat_penalty=params.repeat_penalty, stop=list(params.stop), seed=params.seed)

    def complete(self, prompt, params, echo=False, logprobs=None) -> Completion:
        self.check_prompt(prompt, params.max_tokens)
        if (logprobs is not None) and not self.logits_all:
            raise EngineError("logprobs need the server started with --logits-all (prompt log-probabilities)")
        out = self.llm.create_completion(prompt=list(prompt), echo=echo, logprobs=logprobs, **self._kwargs(params))
        choice = out["choices"][0]
        usage = out["usage"]
        return Completion(choice["text"], usage["prompt_tokens"], usage["completion_tokens"], choice["finish_reason"] or "stop",
                          choice.get("logprobs"))

    def stream(self, prompt, params) -> Iterator[StreamPiece]:
        self.check_prompt(prompt, params.max_tokens)
        for chunk in self.llm.create_completion(prompt=list(prompt), stream=True, **self._kwargs(params)):
            choice = chunk["choices"][0]
            yield StreamPiece(choice["text"], choice.get("finish_reason"))
