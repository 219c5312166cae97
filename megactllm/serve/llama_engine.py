"""GGUF models on llama.cpp through llama-cpp-python: its tokenizer, sampler and KV cache."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from typing import Iterator, Optional, Sequence

from megactllm.serve.engine import (
    Completion,
    Engine,
    EngineError,
    EngineInfo,
    Halt,
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
        from megactllm.serve.extras import require

        require("running a GGUF file", "llama_cpp")
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
        # llama.cpp as the file says tokenizes plain text as the model's tokenizer does, except that it
        # also puts SentencePiece's space after every special token. Where the model's tokenizer puts
        # it only at the start of a text (megactllm's, HF legacy=False; see convert/gguf/vocab.py),
        # the same vocabulary without the automatic space is used, with that one space put in front
        # of plain text: chat prompts and texts holding chat tokens then get training's ids too.
        self.space_prefix = md.get("tokenizer.ggml.add_space_prefix", "true") == "true"
        self.start_only = None
        if self.space_prefix and md.get("megactllm.tokenizer.chat_space_prefix") == "false":
            self.start_only = Llama(model_path=str(path), vocab_only=True, verbose=False,
                                    kv_overrides={"tokenizer.ggml.add_space_prefix": False})
        self.add_bos = llama_cpp.llama_vocab_get_add_bos(self.llm._model.vocab) and self.llm.token_bos() >= 0
        self.logits_all = logits_all
        # Token ids from here on are the embedding's padding rows (convert/gguf/vocab.py): never sampled or scored.
        self.padding_start = int(md.get("megactllm.tokenizer.padding_start", self.llm.n_vocab()))
        self.padding_bias = {i: float("-inf") for i in range(self.padding_start, self.llm.n_vocab())}
        self.info = EngineInfo(name=name or path.stem, kind="llama.cpp", context_length=n_ctx,
                               chat_template=md.get("tokenizer.chat_template"), extra=dict(threads=threads))

    def tokenize(self, text: str) -> list[int]:
        bos = [self.llm.token_bos()] if self.add_bos else []
        if not text:
            return bos
        if self.start_only is not None:
            return bos + self.start_only.tokenize((" " + text).encode("utf-8"), add_bos=False, special=True)
        return bos + self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def chat_tokens(self, messages: Sequence[dict]) -> list[int]:
        special = dict(bos_token=self._piece(self.llm.token_bos()), eos_token=self._piece(self.llm.token_eos()))
        text = render_chat(self.info.chat_template, messages, special)
        # special=True: llama.cpp turns an end-of-turn token into a control token, which it matches
        # in text only so. SentencePiece matches <|im_start|>/<|im_end|> (user-defined) in any text;
        # the one difference left: llama.cpp also reads a typed "<s>"/"</s>" as that control token.
        return (self.start_only or self.llm).tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _piece(self, token_id: int) -> str:
        return "" if token_id < 0 else self.llm._model.token_get_text(token_id)

    def detokenize(self, ids: Sequence[int], first: bool = False) -> str:
        text = self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")
        # The space llama.cpp put before a prompt's text (SentencePiece's dummy prefix) is not the user's.
        return text[1:] if first and self.space_prefix and text.startswith(" ") else text

    def _kwargs(self, params: SamplingParams, halt: Halt) -> dict:
        from llama_cpp import StoppingCriteriaList

        if params.max_tokens < 1:  # llama-cpp-python reads <= 0 as "up to the end of the context"
            raise EngineError(f"max_tokens must be at least 1 to generate, got {params.max_tokens}")
        # llama.cpp seeds are 32-bit and 0xFFFFFFFF means "random": fold a wider seed below it.
        seed = None if params.seed is None else params.seed % 0xFFFFFFFF
        return dict(stopping_criteria=StoppingCriteriaList([lambda ids, logits: halt()]), max_tokens=params.max_tokens,
                    temperature=params.temperature, top_p=params.top_p, top_k=params.top_k, min_p=0.0,
                    repeat_penalty=params.repeat_penalty, stop=list(params.stop), seed=seed,
                    logit_bias=self.padding_bias or None)

    def complete(self, prompt, params, echo=False, logprobs=None) -> Completion:
        self.check_prompt(prompt, params.max_tokens)
        if (logprobs is not None) and not self.logits_all:
            raise EngineError("logprobs need the server started with --logits-all (prompt log-probabilities)")
        text, lp, used, reason = "", None, 0, "length"
        if params.max_tokens > 0:  # 0: score the prompt only (echo + logprobs)
            halt = Halt(params.cancel)
            out = self.llm.create_completion(prompt=list(prompt), logprobs=logprobs, **self._kwargs(params, halt))
            choice = out["choices"][0]
            text, lp, used, reason = choice["text"], choice.get("logprobs"), out["usage"]["completion_tokens"], choice["finish_reason"]
            reason = "length" if halt.fired else reason
        if echo:
            # llama-cpp-python's own echo fails on token-id prompts: echo the prompt from its ids
            # and score it from llama.cpp's logits of every prompt position.
            prompt_text = self.detokenize(prompt, first=True)
            if logprobs is not None:
                lp = _join_logprobs(self._prompt_logprobs(prompt, logprobs), lp, len(prompt_text))
            text = prompt_text + text
        return Completion(text, len(prompt), used, reason or "stop", lp)

    def _prompt_logprobs(self, prompt: list[int], top: int) -> dict:
        self.llm.reset()
        self.llm.eval(list(prompt))
        logits = np.asarray(self.llm.scores[: len(prompt)], dtype=np.float64)
        logits[:, self.padding_start:] = -np.inf
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        start = 1 if prompt and prompt[0] == self.llm.token_bos() else 0  # BOS has no text: the prefix space follows it
        pieces = [self.detokenize([t], first=(i == start)) for i, t in enumerate(prompt)]
        token_logprobs, top_logprobs = [None], [None]
        for i in range(1, len(prompt)):
            token_logprobs.append(float(logp[i - 1, prompt[i]]))
            best = np.argsort(-logp[i - 1])[: max(top, 1)]
            top_logprobs.append({self.detokenize([int(t)]): float(logp[i - 1, t]) for t in best})
        offsets = np.cumsum([0] + [len(p) for p in pieces[:-1]]).tolist()
        self.llm.reset()
        return dict(tokens=pieces, token_logprobs=token_logprobs, top_logprobs=top_logprobs, text_offset=offsets)

    def stream(self, prompt, params) -> Iterator[StreamPiece]:
        self.check_prompt(prompt, params.max_tokens)
        halt = Halt(params.cancel)
        chunks = self.llm.create_completion(prompt=list(prompt), stream=True, **self._kwargs(params, halt))
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                reason = choice.get("finish_reason")
                yield StreamPiece(choice["text"], "length" if reason and halt.fired else reason)
        finally:
            chunks.close()  # a reader that left ends llama.cpp's generation here, on this thread


def _join_logprobs(prompt_lp: dict, generated: Optional[dict], shift: int) -> dict:
    if not generated:
        return prompt_lp
    joined = {key: prompt_lp[key] + list(generated.get(key) or []) for key in ("tokens", "token_logprobs", "top_logprobs")}
    joined["text_offset"] = prompt_lp["text_offset"] + [o + shift for o in generated.get("text_offset") or []]
    return joined
