"""Blend schedules: data mixtures that change during training, phase by phase.

A recipe's `data.blend_schedule` is a list of phases, each a Megatron-style weighted blend and
the point where it ends, in iterations or in consumed tokens:

    blend_schedule:
      - name: warm_start                      # optional; default phase1, phase2, ...
        end_tokens: 20000000000               # or end_iteration: 5000
        blend: ["0.3", data/parallel_text_document, "0.7", data/zh_text_document]
      - name: decay
        blend: ["0.5", data/zh_text_document, "0.5", data/zh_hq_text_document]   # no end: to the end of the run

A phase ends at an iteration boundary: `end_iteration: N` makes iteration N the phase's last
step; `end_tokens: T` ends it at the first iteration whose consumed tokens reach T (a step
consumes global_batch_size x seq_length tokens). Since every step reads global_batch_size
consecutive samples, phase p owns the global sample range [start_p, end_p) x global_batch_size,
and the loop's `consumed_samples` alone says which phase a step reads: resume is exact.

This module parses and checks a schedule and compares it with the one a checkpoint was written
under; megactllm.data.pretrain.scheduled_blend builds the datasets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from megactllm.data.blend import Blend, BlendError, parse_blend

PHASE_KEYS = ("name", "end_iteration", "end_tokens", "blend")


class BlendScheduleError(BlendError):
    """A blend schedule that cannot be used as written, or that changed under a resumed run."""


@dataclass(frozen=True)
class Phase:
    name: str
    blend: Blend
    weights: tuple  # normalized, one per prefix
    end_iteration: Optional[int] = None  # as written
    end_tokens: Optional[int] = None  # as written

    def spec(self) -> dict:
        """The phase as written (normalized weights): what a checkpoint records and resume compares."""
        end = {"iteration": self.end_iteration} if self.end_iteration is not None else (
            {"tokens": self.end_tokens} if self.end_tokens is not None else None
        )
        return {"name": self.name, "end": end, "blend": [[p, round(w, 12)] for p, w in zip(self.blend.prefixes, self.weights)]}

    def describe(self) -> str:
        return ", ".join(f"{w:.3f} {p}" for p, w in zip(self.blend.prefixes, self.weights))


@dataclass(frozen=True)
class ResolvedPhase:
    """A phase placed on the run: iterations [start_iteration, end_iteration) read its blend."""

    index: int
    phase: Phase
    start_iteration: int
    end_iteration: int


def _positive_int(value, where: str) -> int:
    if isinstance(value, bool):
        raise BlendScheduleError(f"{where} must be a positive integer, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BlendScheduleError(f"{where} must be a positive integer, got {value!r}") from None
    if number != int(number) or number <= 0:
        raise BlendScheduleError(f"{where} must be a positive integer, got {value!r}")
    return int(number)


def parse_phase(raw, index: int, is_last: bool) -> Phase:
    where = f"data.blend_schedule[{index}]"
    if not isinstance(raw, dict):
        raise BlendScheduleError(f"{where} must be a mapping with 'blend' and 'end_iteration' or 'end_tokens', got {raw!r}")
    unknown = sorted(set(raw) - set(PHASE_KEYS))
    if unknown:
        raise BlendScheduleError(f"{where}: unknown key(s) {unknown}; a phase has {list(PHASE_KEYS)}")
    name = str(raw.get("name") or f"phase{index + 1}")
    where = f"{where} ({name})"
    if "blend" not in raw or not raw["blend"]:
        raise BlendScheduleError(f"{where} has no blend, e.g. blend: ['0.3', parallel_text_document, '0.7', zh_text_document]")
    blend = parse_blend(raw["blend"], f"{where}.blend")
    if blend.weights is None:
        if len(blend.prefixes) > 1:
            raise BlendScheduleError(
                f"{where}.blend lists {len(blend.prefixes)} datasets without weights: a scheduled phase needs "
                "explicit proportions, e.g. ['0.3', a, '0.7', b]"
            )
        weights = (1.0,)
    else:
        if any(w == 0 for w in blend.weights):
            zero = [p for p, w in zip(blend.prefixes, blend.weights) if w == 0]
            raise BlendScheduleError(f"{where}.blend gives weight 0 to {zero}: leave a dataset out of a phase instead")
        if len(set(blend.prefixes)) != len(blend.prefixes):
            raise BlendScheduleError(f"{where}.blend names a dataset twice: {blend.prefixes}")
        weights = tuple(blend.normalized_weights())
    has_iter, has_tokens = raw.get("end_iteration") is not None, raw.get("end_tokens") is not None
    if has_iter and has_tokens:
        raise BlendScheduleError(f"{where} sets both end_iteration and end_tokens; give one")
    if not (has_iter or has_tokens) and not is_last:
        raise BlendScheduleError(f"{where} has no end: every phase but the last needs end_iteration or end_tokens")
    return Phase(
        name=name,
        blend=blend,
        weights=weights,
        end_iteration=_positive_int(raw["end_iteration"], f"{where}.end_iteration") if has_iter else None,
        end_tokens=_positive_int(raw["end_tokens"], f"{where}.end_tokens") if has_tokens else None,
    )


def parse_schedule(raw) -> list[Phase]:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise BlendScheduleError(f"data.blend_schedule must be a non-empty list of phases, got {raw!r}")
    phases = [parse_phase(p, i, i == len(raw) - 1) for i, p in enumerate(raw)]
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise BlendScheduleError(f"data.blend_schedule: phase names repeat: {names}")
    return phases


class BlendSchedule:
    """The phases of a schedule placed on a run of `train_iters` steps of `global_batch_size` samples."""

    def __init__(self, phases: list[Phase], global_batch_size: int, seq_length: int, train_iters: int):
        self.phases = phases
        self.global_batch_size = global_batch_size
        self.seq_length = seq_length
        self.train_iters = train_iters
        self.resolved = self._resolve()

    @classmethod
    def from_config(cls, cfg, train_iters: int) -> "BlendSchedule":
        return cls(parse_schedule(cfg.data.blend_schedule), cfg.train.global_batch_size, cfg.model.seq_length, train_iters)

    def end_iteration_of(self, phase: Phase) -> Optional[int]:
        if phase.end_iteration is not None:
            return phase.end_iteration
        if phase.end_tokens is not None:
            return math.ceil(phase.end_tokens / (self.global_batch_size * self.seq_length))
        return None

    def _resolve(self) -> list[ResolvedPhase]:
        out, start = [], 0
        for i, phase in enumerate(self.phases):
            end = self.end_iteration_of(phase)
            where = f"data.blend_schedule[{i}] ({phase.name})"
            if end is not None and end <= start:
                raise BlendScheduleError(
                    f"{where} ends at iteration {end}, not after the previous phase's end ({start}): phase ends must increase"
                    + (f" (end_tokens={phase.end_tokens} is iteration {end} at "
                       f"{self.global_batch_size * self.seq_length} tokens per iteration)" if phase.end_tokens else "")
                )
            if start >= self.train_iters:
                break  # a phase the run never reaches (a short run of a long recipe)
            if end is None or end > self.train_iters:
                end = self.train_iters
            out.append(ResolvedPhase(i, phase, start, end))
            start = end
        if start < self.train_iters:
            last = self.phases[-1]
            raise BlendScheduleError(
                f"data.blend_schedule ends at iteration {start} ({last.name}) but the run has {self.train_iters} "
                "iterations: leave the last phase without an end, or extend it"
            )
        return out

    @property
    def unreached(self) -> list[Phase]:
        reached = {r.index for r in self.resolved}
        return [p for i, p in enumerate(self.phases) if i not in reached]

    @property
    def prefixes(self) -> list[str]:
        """Every dataset of the schedule's reached phases, in order of first use: the dataset_id space."""
        seen: dict = {}
        for r in self.resolved:
            for p in r.phase.blend.prefixes:
                seen.setdefault(p, len(seen))
        return list(seen)

    def sample_starts(self) -> list[int]:
        return [r.start_iteration * self.global_batch_size for r in self.resolved]

    def phase_at_iteration(self, iteration: int) -> ResolvedPhase:
        """The phase that iteration `iteration` (1-based, as the loop counts) reads."""
        for r in self.resolved:
            if r.start_iteration < iteration <= r.end_iteration:
                return r
        raise IndexError(f"iteration {iteration} is outside the run's 1..{self.train_iters}")

    def spec(self) -> list[dict]:
        return [p.spec() for p in self.phases]

    def table(self) -> str:
        lines = [f"blend schedule: {len(self.phases)} phases"]
        for r in self.resolved:
            p = r.phase
            lines.append(
                f"  phase {r.index + 1} {p.name}: iterations {r.start_iteration + 1}-{r.end_iteration} "
                f"(samples {r.start_iteration * self.global_batch_size}-{r.end_iteration * self.global_batch_size - 1}): "
                f"{p.describe()}"
            )
        for p in self.unreached:
            lines.append(f"  phase {self.phases.index(p) + 1} {p.name}: not reached in {self.train_iters} iterations")
        return "\n".join(lines)

    def log_fields(self, iteration: int) -> dict:
        """metrics.jsonl / TensorBoard fields of the phase that iteration `iteration` read."""
        r = self.phase_at_iteration(iteration)
        return {
            "blend_phase": r.index + 1,
            "blend_phase_name": r.phase.name,
            "blend_weights": dict(zip(r.phase.blend.prefixes, r.phase.weights)),
            "blend_phase_start_tokens": r.start_iteration * self.global_batch_size * self.seq_length,
        }

    def announcement(self, iteration: int, first_of_run: bool) -> Optional[str]:
        """A log line when iteration `iteration` opens a phase (or the run resumes inside one)."""
        r = self.phase_at_iteration(iteration)
        if iteration == r.start_iteration + 1:
            what = "begins"
        elif first_of_run:
            what = "continues"
        else:
            return None
        return (
            f"blend phase {r.index + 1}/{len(self.phases)} {r.phase.name} {what} at iteration {iteration} "
            f"(sample {(iteration - 1) * self.global_batch_size}, token {(iteration - 1) * self.global_batch_size * self.seq_length:,}): "
            f"{r.phase.describe()}"
        )


def _diff(saved: list, current: list) -> list[str]:
    out = []
    for i in range(max(len(saved), len(current))):
        a = saved[i] if i < len(saved) else None
        b = current[i] if i < len(current) else None
        if a != b:
            out.append(f"phase {i + 1}: checkpoint {a} vs recipe {b}")
    return out


def check_resumed_schedule(
    saved: Optional[list], current: Optional[list], allow_change: bool, checkpoint: str, warn: Callable[[str], None]
) -> None:
    """Refuse to resume under another schedule than the checkpoint's, unless the recipe allows it.

    A run without a schedule records None, so switching a fixed blend to a schedule (or back)
    counts as a change too.
    """
    if (saved or None) == (current or None):
        return
    if saved is None:
        diffs = ["the checkpoint was written by a run with a fixed blend (data.data_path), the recipe has a schedule"]
    elif current is None:
        diffs = ["the checkpoint was written under a blend schedule, the recipe has none"]
    else:
        diffs = _diff(saved, current)
    text = f"the data blend schedule differs from the one {checkpoint} was trained with: " + "; ".join(diffs)
    if not allow_change:
        raise BlendScheduleError(
            text + ". Restore the recipe's schedule, or set data.allow_blend_schedule_change=true to continue "
            "under the new one from the checkpoint's consumed samples"
        )
    warn(text + ". data.allow_blend_schedule_change is set: continuing under the recipe's schedule")
