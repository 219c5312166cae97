"""llama.cpp keeps each MoE layer's routed experts stacked: one [E, out, in] tensor per projection
(blk.{i}.ffn_gate_exps / ffn_up_exps / ffn_down_exps). Hugging Face names each expert's tensors;
these generators turn the per-expert stream into the stacked one, holding one layer's experts at a
time. A stacked tensor travels under the name `model.layers.{i}.mlp.experts.{part}` (part:
gate_proj, up_proj, down_proj), which the MoE family maps to llama.cpp's name.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from megactllm.convert.safetensors_io import TensorSpec
from megactllm.model.families.moe import expert_of

PARTS = ("gate_proj", "up_proj", "down_proj")


def _expert_key(name: str):
    """(layer, expert, part) of a per-expert HF tensor, else None."""
    parts = name.split(".", 3)  # model.layers.{i}.{rest}
    if len(parts) != 4 or parts[1] != "layers":
        return None
    found = expert_of(parts[3])
    return None if found is None else (int(parts[2]), *found)


def stacked_name(layer: int, part: str) -> str:
    return f"model.layers.{layer}.mlp.experts.{part}"


def stack_plan(plan: Iterable[TensorSpec]) -> list[TensorSpec]:
    """The plan with each layer's per-expert tensors replaced by its three stacked ones, in place."""
    out, pending = [], {}
    for spec in plan:
        key = _expert_key(spec.name)
        if key is None:
            out += _flush_plan(pending)
            out.append(spec)
            continue
        layer, _expert, part = key
        pending.setdefault((layer, part), []).append(spec)
    return out + _flush_plan(pending)


def _flush_plan(pending: dict) -> list[TensorSpec]:
    specs = [TensorSpec(stacked_name(layer, part), (len(group), *group[0].shape), group[0].dtype)
             for part in PARTS for (layer, p), group in sorted(pending.items()) if p == part]
    pending.clear()
    return specs


def stack_tensors(tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) as stack_plan orders them: experts stacked by index, one layer in memory."""
    pending: dict = {}
    for name, tensor in tensors:
        key = _expert_key(name)
        if key is None:
            yield from _flush(pending)
            yield name, tensor
            continue
        layer, expert, part = key
        pending.setdefault((layer, part), {})[expert] = tensor
    yield from _flush(pending)


def _flush(pending: dict) -> Iterator[tuple[str, torch.Tensor]]:
    for part in PARTS:
        for (layer, p), by_expert in sorted(pending.items()):
            if p == part:
                yield stacked_name(layer, part), torch.stack([by_expert[e] for e in sorted(by_expert)])
    pending.clear()
