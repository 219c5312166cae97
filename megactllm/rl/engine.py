"""Rollout engines: sample a group of completions per prompt with the policy's current weights.

An engine answers two calls, so vLLM or SGLang can take over on GPUs later behind the same shape:

    engine.load_weights(hf_state_dict)            # the policy as it is now, handed over in memory
    engine.generate(prompts, params, seeds)        # -> one Rollout per completion, grouped by prompt

`TransformersEngine` runs transformers' `generate`, one prompt's group per batch (no padding, so the
engine's positions and the trainer's are the same), and returns each sampled token's log-prob
under the temperature-scaled distribution (TRL's definition), computed from the raw logits, so
the trainer can compare its own recomputation with what the engine sampled from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import torch


@dataclass(frozen=True)
class SamplingParams:
    group_size: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: tuple = ()
    pad_token_id: int = 0


@dataclass
class Rollout:
    prompt: int  # index into the prompts passed to generate
    completion_ids: list  # the sampled tokens, the stop token included when one ended it
    logprobs: list  # the engine's log-prob of each sampled token
    finished: bool  # ended at a stop token (else at max_new_tokens)


class RolloutEngine(Protocol):
    def load_weights(self, state_dict: dict) -> None: ...

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, seeds: Sequence[int]) -> list[Rollout]: ...


class TransformersEngine:
    """transformers' AutoModelForCausalLM built from an HF config dict; weights set by load_weights."""

    def __init__(self, hf_config: dict, dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None):
        from transformers import AutoConfig, AutoModelForCausalLM

        config = dict(hf_config)
        model_type = config.pop("model_type")
        config.pop("torch_dtype", None)
        config.pop("dtype", None)
        self.config = AutoConfig.for_model(model_type, **config)
        self.dtype = dtype
        self.device = device or torch.device("cpu")
        self.model = AutoModelForCausalLM.from_config(self.config, dtype=dtype).to(self.device).eval()
        self.loaded = False

    def load_weights(self, state_dict: dict) -> None:
        state = {k: v.to(self.device, self.dtype) for k, v in state_dict.items()}
        tied = bool(getattr(self.config, "tie_word_embeddings", False))
        if tied:
            state.pop("lm_head.weight", None)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (tied and k == "lm_head.weight")]
        if missing or unexpected:
            raise RuntimeError(f"rollout engine weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.loaded = True

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, seeds: Sequence[int]) -> list[Rollout]:
        """`group_size` completions of each prompt; prompt p samples from torch's stream seeded with seeds[p]."""
        if not self.loaded:
            raise RuntimeError("the rollout engine has no weights: call load_weights first")
        out: list[Rollout] = []
        stops = set(params.stop_token_ids)
        for p, prompt in enumerate(prompts):
            ids = torch.tensor([list(prompt)], dtype=torch.long, device=self.device)
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seeds[p])
                result = self.model.generate(
                    ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=params.temperature,
                    top_p=params.top_p, top_k=0, max_new_tokens=params.max_new_tokens,
                    num_return_sequences=params.group_size, eos_token_id=list(stops) or None,
                    pad_token_id=params.pad_token_id, output_logits=True, return_dict_in_generate=True,
                )
            sequences = result.sequences[:, ids.shape[1]:]
            logits = torch.stack(result.logits, dim=1).float() / params.temperature  # [G, steps, vocab]
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, sequences.unsqueeze(-1)).squeeze(-1)
            for g in range(params.group_size):
                tokens = sequences[g].tolist()
                end = next((i + 1 for i, t in enumerate(tokens) if t in stops), None)
                n = end if end is not None else len(tokens)
                out.append(Rollout(p, tokens[:n], logprobs[g, :n].tolist(), end is not None))
        return out
