"""What a run reports: throughput and MFU arithmetic, the log line, TensorBoard, metrics.jsonl and
the loss-curve PNG.

Only one rank (the loop picks global rank 0, which holds the globally reduced values) writes.
`python -m megactllm.training.run.metrics RUN_DIR` redraws the PNG from RUN_DIR/metrics.jsonl at any time.
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from megactllm.common.jsonl import iter_jsonl
from megactllm.common.optional import require

H100_BF16_PEAK_TFLOPS = 989.0
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"


def device_peak_tflops(override: Optional[float] = None) -> Optional[float]:
    """Dense bf16 peak of this device for MFU: the recipe's value, 989 on H100/H200, else unknown."""
    if override:
        return float(override)
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        if "H100" in name or "H200" in name or "GH200" in name:
            return H100_BF16_PEAK_TFLOPS
    return None


def peak_memory_gib() -> float:
    """Peak allocated GPU memory, or on CPU this process's peak resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss / 2**20


@dataclass
class Throughput:
    tokens_per_s: float
    tflops_per_device: float
    mfu: Optional[float]


def throughput(tokens: int, seconds: float, flops_per_token: float, world_size: int, peak_tflops: Optional[float]) -> Throughput:
    seconds = max(seconds, 1e-9)
    tokens_per_s = tokens / seconds
    tflops = flops_per_token * tokens_per_s / world_size / 1e12
    mfu = tflops / peak_tflops if peak_tflops else None
    return Throughput(tokens_per_s, tflops, mfu)


def format_log_line(record: dict) -> str:
    parts = [
        f"iter {record['iteration']:>7d}/{record['train_iters']}",
        f"tokens {record['consumed_tokens']:,}",
        f"loss {record['loss']:.4f}",
        f"lr {record['lr']:.3e}",
        f"grad_norm {record['grad_norm']:.3f}" if record.get("grad_norm") is not None else "grad_norm n/a",
        f"skipped {record['skipped_iterations']}",
        f"tokens/s {record['tokens_per_s']:,.0f}",
        f"TFLOP/s/dev {record['tflops_per_device']:.2f}",
        f"MFU {100 * record['mfu']:.1f}%" if record.get("mfu") is not None else "MFU n/a",
        f"peak_mem {record['peak_mem_gib']:.2f} GiB",
    ]
    extra = [f"{k} {v:.4f}" for k, v in record.get("metrics", {}).items() if k != record.get("loss_name")]
    if record.get("skipped_spike"):
        extra.append("SKIPPED (spike, not applied)")
    if "step_time_slowest_rank" in record:  # the straggler report (world > 1)
        extra.append(f"slowest rank {record['slowest_rank']} {record['step_time_slowest_rank']:.3f}s "
                     f"({record['step_time_slowest_over_median']:.2f}x median)")
    if "blend_phase" in record:  # a blend schedule's active phase and its proportions
        weights = ", ".join(f"{w:.2f} {Path(p).name}" for p, w in record["blend_weights"].items())
        extra.append(f"phase {record['blend_phase']} {record['blend_phase_name']} ({weights})")
    return " | ".join(parts + extra)


# Scalars of a train record beside its task metrics, as train/<key> in TensorBoard and the sinks.
TRAIN_SCALARS = (
    "loss", "lr", "grad_norm", "skipped_iterations", "tokens_per_s", "tflops_per_device", "mfu", "peak_mem_gib",
    "consumed_tokens", "skipped_spike", "step_time_slowest_rank", "slowest_rank", "step_time_median",
    "step_time_slowest_over_median",
)


class RunLogger:
    """stdout lines, TensorBoard scalars and metrics.jsonl on the logging rank; no-ops elsewhere.

    Other trackers (W&B) are sinks: `add_sink(sink)` hands them every scalar TensorBoard gets at an
    iteration, as `sink.scalars({tag: value}, iteration)`.
    """

    def __init__(self, log_dir: Optional[str], tensorboard_dir: Optional[str], enabled: bool):
        self.enabled = enabled
        self.log_dir = Path(log_dir) if log_dir else None
        self._jsonl = None
        self._tb = None
        self._sinks: list = []
        if not enabled:
            return
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.log_dir / METRICS_FILE, "a", encoding="utf-8")
        if tensorboard_dir:
            require("tensorboard", "logging.tensorboard_dir")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(tensorboard_dir)

    def info(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def warning(self, text: str) -> None:
        if self.enabled:
            print(f"WARNING: {text}", file=sys.stderr, flush=True)

    def add_sink(self, sink) -> None:
        if self.enabled:
            self._sinks.append(sink)

    def _scalars(self, values: dict, step: int) -> None:
        """Scalars at an iteration: TensorBoard and every sink."""
        values = {k: float(v) for k, v in values.items() if v is not None}
        if self._tb:
            for tag, value in values.items():
                self._tb.add_scalar(tag, value, step)
        for sink in self._sinks:
            sink.scalars(values, step)

    def event(self, record: dict) -> None:
        """A record of something that happened (a rollback) in metrics.jsonl; record["kind"] names it."""
        if self.enabled:
            self._write(record)

    def _write(self, record: dict) -> None:
        if self._jsonl:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()

    def train(self, record: dict) -> None:
        if not self.enabled:
            return
        print(format_log_line(record), flush=True)
        self._write({"kind": "train", **record})
        values = {f"train/{key}": record.get(key) for key in TRAIN_SCALARS}
        values.update({f"train/{name}": value for name, value in record.get("metrics", {}).items()})
        values.update({f"train/moe/{name}": value for name, value in record.get("moe", {}).items()})
        if "blend_phase" in record:
            values["train/blend_phase"] = record["blend_phase"]
            for prefix, weight in record["blend_weights"].items():
                values[f"train/blend_weight/{Path(prefix).name}"] = weight
        self._scalars(values, record["iteration"])
        if self._tb:
            self._tb.add_scalar("train/loss_vs_tokens", record["loss"], record["consumed_tokens"])
            self._tb.flush()

    def validation(self, record: dict) -> None:
        if not self.enabled:
            return
        line = f"validation at iter {record['iteration']} | " + " | ".join(
            f"{k} {v:.4f}" for k, v in record["metrics"].items()
        ) + (f" | ppl {record['ppl']:.3f}" if "ppl" in record else "")
        print(line, flush=True)
        self._write({"kind": "valid", **record})
        values = {f"valid/{name}": value for name, value in record["metrics"].items()}
        if "ppl" in record:
            values["valid/ppl"] = record["ppl"]
        self._scalars(values, record["iteration"])
        if self._tb:
            self._tb.flush()

    def benchmark(self, record: dict) -> None:
        """In-loop benchmark accuracies (megactllm.eval.inloop): console, metrics.jsonl, TensorBoard."""
        if not self.enabled:
            return
        shown = {k: v for k, v in record["metrics"].items() if k.endswith("acc_micro") or k.endswith("/acc")}
        print(f"benchmarks at iter {record['iteration']} | " + " | ".join(f"{k} {v:.4f}" for k, v in shown.items()), flush=True)
        self._write({"kind": "bench", **record})
        self._scalars({f"bench/{name}": value for name, value in record["metrics"].items()}, record["iteration"])
        if self._tb:
            for name, value in record["metrics"].items():
                self._tb.add_scalar(f"bench_vs_tokens/{name}", value, record["consumed_tokens"])
            self._tb.flush()

    def close(self) -> None:
        self._sinks = []
        if self._jsonl:
            self._jsonl.close()
            self._jsonl = None
        if self._tb:
            self._tb.close()
            self._tb = None


def _plot_benchmarks(ax, bench: dict) -> None:
    """Benchmark-level micro accuracies (e.g. cmmlu/acc_micro) against consumed tokens."""
    for source, records in bench.items():
        names = sorted({k for r in records for k in r["metrics"] if k.count("/") == 1 and k.endswith("acc_micro")})
        for name in names:
            points = [(r["consumed_tokens"], r["metrics"][name]) for r in records if name in r["metrics"]]
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-" if source == "in-loop" else "x--",
                    label=f"{name.split('/')[0]} acc ({source})")
    ax.set_xlabel("consumed tokens")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend()


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def read_metrics(run_dir: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """(train records, validation records) of a run; a resumed run's repeated iterations keep the last."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a megactllm run directory (logging.dir)?")
    train, valid = {}, {}
    for _, r in iter_jsonl(path):
        if r.get("kind") in ("train", "valid"):  # "bench": read_benchmarks
            (train if r.get("kind") == "train" else valid)[r["iteration"]] = r
    return [train[k] for k in sorted(train)], [valid[k] for k in sorted(valid)]


def read_benchmarks(path: str | os.PathLike) -> list[dict]:
    """Benchmark records (kind "bench") of a metrics.jsonl or checkpoint_evals.jsonl, by iteration."""
    records = {}
    if Path(path).is_file():
        for _, r in iter_jsonl(path):
            if r.get("kind") == "bench":
                records[r["iteration"]] = r
    return [records[k] for k in sorted(records)]


def plot_loss_curve(run_dir: str | os.PathLike, out: Optional[str] = None) -> Path:
    """Training (and validation) loss against consumed tokens, written as a PNG; beside it the
    benchmark accuracy of in-loop evaluation and of checkpoint_evals.jsonl, when there is one."""
    matplotlib = require("matplotlib", "the loss curve")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, valid = read_metrics(run_dir)
    out_path = Path(out) if out else Path(run_dir) / LOSS_CURVE_FILE
    bench = {"in-loop": read_benchmarks(Path(run_dir) / METRICS_FILE),
             "checkpoints": read_benchmarks(Path(run_dir) / "checkpoint_evals.jsonl")}
    bench = {k: v for k, v in bench.items() if v}
    if bench:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5))
        _plot_benchmarks(bx, bench)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([r["consumed_tokens"] for r in train], [r["loss"] for r in train], label="train loss")
    if valid:
        ax.plot([r["consumed_tokens"] for r in valid], [r["metrics"][r["loss_name"]] for r in valid], "o-", label="valid loss")
    _mark_blend_phases(ax, train)
    ax.set_xlabel("consumed tokens")
    ax.set_ylabel("loss")
    ax.set_title(f"{Path(run_dir).resolve().name}: {len(train)} logged iterations")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def _mark_blend_phases(ax, train: list[dict]) -> None:
    """A dashed line where a blend schedule's phase changes, at the tokens consumed before it."""
    previous = None
    for r in train:
        phase = r.get("blend_phase")
        if phase is not None and previous is not None and phase != previous:
            at = r["blend_phase_start_tokens"]
            ax.axvline(at, color="gray", linestyle="--", linewidth=1)
            ax.annotate(f"phase {phase}: {r['blend_phase_name']}", (at, 1), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=8, color="gray")
        previous = phase if phase is not None else previous


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m megactllm.training.run.metrics RUN_DIR [OUT.png]")
    print(plot_loss_curve(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None))
