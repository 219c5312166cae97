"""HF LLaMA directories (and megactllm checkpoints, exported to one first) on transformers:
its tokenizer, chat template, sampler (`generate`) and KV cache."""
from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Iterator, Optional, Sequence

from megactllm.serve.engine import (
    Completion,
    Engine,
    EngineError,
    EngineInfo,
    Halt,
    StreamPiece,
    template_errors,
)
from megactllm.tokenizer.chat_formats import chat_format_of

# Below this temperature sampling is greedy: logits / a near-zero temperature overflow to inf and
# the sampler's probabilities turn to NaN.
_GREEDY_BELOW = 1e-5


def _hf_dir_of(path: Path) -> tuple[Path, Optional[tempfile.TemporaryDirectory]]:
    if (path / "config.json").is_file():
        return path, None
    from megactllm.convert import export_to_hf

    tmp = tempfile.TemporaryDirectory(prefix="megactllm-serve-")
    export_to_hf(path, Path(tmp.name) / "hf")
    return Path(tmp.name) / "hf", tmp


class TransformersEngine(Engine):
    def __init__(self, path: str | Path, threads: Optional[int] = None, name: Optional[str] = None, dtype: str = "float32",
                 token_timeout_s: float = 60.0, **_):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.hf_dir, self._tmp = _hf_dir_of(Path(path))
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.hf_dir), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(str(self.hf_dir), dtype=getattr(torch, dtype), local_files_only=True).eval()
        ctx = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.info = EngineInfo(name=name or Path(path).name, kind="transformers", context_length=ctx,
                               chat_template=self.tokenizer.chat_template)
        # Stop at EOS and at the end of a chat turn in the tokenizer's format (<|im_end|>, <|eot_id|>).
        chat_format = chat_format_of(self.tokenizer, required=False)
        stop = [self.tokenizer.eos_token_id] + (chat_format.stop_token_ids(self.tokenizer) if chat_format else [])
        self.stop_ids = list(dict.fromkeys(i for i in stop if i is not None))
        # What the tokenizer puts before a text (its BOS, where its config says so); an EOS it may
        # append is no part of a prompt. transformers 5 keeps this in the post-processor only.
        with_specials = self.tokenizer("a")["input_ids"]
        plain = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        at = next((i for i in range(len(with_specials)) if with_specials[i:i + len(plain)] == plain), 0)
        self.prefix_ids = list(with_specials[:at])
        # A stream waits at most this long for the next token before it gives up (and stops generation).
        self.token_timeout_s = token_timeout_s
        # Embedding rows past the tokenizer's ids are padding: never sampled, never in logprobs.
        self.padding_ids = list(range(len(self.tokenizer), int(getattr(self.model.config, "vocab_size", 0) or 0)))

    def tokenize(self, text: str) -> list[int]:
        return self.prefix_ids + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def chat_tokens(self, messages: Sequence[dict]) -> list[int]:
        if not self.tokenizer.chat_template:
            raise EngineError("this model has no chat template (a base model): use /v1/completions")
        with template_errors():
            out = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def _generate_kwargs(self, prompt, params, halt: Halt):
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        if params.seed is not None:
            torch.manual_seed(params.seed)
        sample = params.temperature >= _GREEDY_BELOW
        kwargs = dict(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      max_new_tokens=min(params.max_tokens, self.info.context_length - len(prompt)),
                      do_sample=sample, eos_token_id=self.stop_ids, pad_token_id=self.stop_ids[0],
                      repetition_penalty=params.repeat_penalty, suppress_tokens=self.padding_ids or None)
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)

        class Halted(StoppingCriteria):  # polled after every token
            def __call__(self, input_ids, scores, **kw):
                return torch.full((input_ids.shape[0],), halt(), dtype=torch.bool)

        kwargs.update(stopping_criteria=StoppingCriteriaList([Halted()]))
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        return kwargs

    def _finish(self, text: str, ids: list[int], params, halt: Halt) -> tuple[str, str]:
        for s in params.stop:
            if s in text:
                return text[: text.index(s)], "stop"
        if ids and ids[-1] in self.stop_ids:
            return text, "stop"
        return text, ("length" if len(ids) >= params.max_tokens or halt.fired else "stop")

    def complete(self, prompt, params, echo=False, logprobs=None) -> Completion:
        import torch

        self.check_prompt(prompt, params.max_tokens)
        out, halt = [], Halt(params.cancel)
        if params.max_tokens > 0:  # 0: score the prompt only (echo + logprobs)
            with torch.no_grad():
                out = self.model.generate(**self._generate_kwargs(prompt, params, halt))[0, len(prompt):].tolist()
        text, reason = self._finish(self.tokenizer.decode(out, skip_special_tokens=True), out, params, halt)
        lp = self._prompt_logprobs(prompt, logprobs) if (echo and logprobs is not None) else None
        if echo:
            text = self.tokenizer.decode(prompt) + text
        return Completion(text, len(prompt), len(out), reason, lp)

    def _prompt_logprobs(self, prompt: list[int], top: int) -> dict:
        import torch

        with torch.no_grad():
            logits = self.model(torch.tensor([prompt])).logits[0].float()
        if self.padding_ids:
            logits[:, self.padding_ids[0]:] = float("-inf")
        logp = torch.log_softmax(logits, dim=-1)
        tokens = [self.tokenizer.decode([t]) for t in prompt]
        token_logprobs = [None] + [logp[i - 1, prompt[i]].item() for i in range(1, len(prompt))]
        tops = [None]
        for i in range(1, len(prompt)):
            values, ids = logp[i - 1].topk(max(top, 1))
            tops.append({self.tokenizer.decode([int(t)]): v.item() for v, t in zip(values, ids)})
        offsets, pos = [], 0
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        return dict(tokens=tokens, token_logprobs=token_logprobs, top_logprobs=tops, text_offset=offsets)

    def stream(self, prompt, params) -> Iterator[StreamPiece]:
        """Generation runs on a helper thread feeding a streamer; whatever ends this generator (the
        end, an error in generation, no token within token_timeout_s, the reader leaving) stops
        that thread and waits for it, so the engine is free only when the work has really ended."""
        import queue

        import torch
        from transformers import TextIteratorStreamer

        self.check_prompt(prompt, params.max_tokens)
        if params.max_tokens < 1:
            raise EngineError(f"max_tokens must be at least 1 to stream, got {params.max_tokens}")
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.token_timeout_s)
        halt, result, failure = Halt(params.cancel), {}, []

        def run():
            try:
                with torch.no_grad():
                    out = self.model.generate(**self._generate_kwargs(prompt, params, halt), streamer=streamer)
                result["ids"] = out[0, len(prompt):].tolist()
            except BaseException as e:  # noqa: BLE001 (re-raised on the reading side)
                failure.append(e)
                streamer.end()  # wake the reader

        worker = threading.Thread(target=run, daemon=True, name="hf-generate")
        worker.start()
        text, emitted = "", 0
        hold = max((len(s) for s in params.stop), default=0)  # a stop string may still be forming
        try:
            for piece in streamer:
                text += piece
                if any(s in text for s in params.stop):
                    continue  # generate stops itself at the stop string; drain the streamer
                safe = len(text) - hold
                if safe > emitted:
                    yield StreamPiece(text[emitted:safe])
                    emitted = safe
        except queue.Empty:
            raise TimeoutError(f"no token came within {self.token_timeout_s:.0f}s; generation stopped") from None
        finally:
            if worker.is_alive():
                halt.stopped = True
            worker.join()
        if failure:
            raise failure[0]
        final, reason = self._finish(text, result.get("ids", []), params, halt)
        yield StreamPiece(final[emitted:], reason)
