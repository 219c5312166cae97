"""python -m bench.gpu_check [--cpu] [--output DIR] [--minutes N]: see scripts/gpu_check.sh."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.gpu_check.context import Context
from bench.gpu_check.report import Row, Skip, run_stage, write

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


def stages(ctx: Context):
    from bench.gpu_check import stages_other as o
    from bench.gpu_check import stages_train as t

    return [
        ("build C++ extensions", lambda: o.build_extensions(ctx)),
        ("environment", lambda: o.environment(ctx)),
        ("bf16 vs fp32 losses", lambda: t.bf16_vs_fp32(ctx)),
        ("throughput, selective recompute", lambda: t.throughput(ctx, recompute=True)),
        ("throughput, no recompute", lambda: t.throughput(ctx, recompute=False)),
        ("SDPA kernels", lambda: o.sdpa_kernels(ctx)),
        ("save and resume", lambda: t.save_resume(ctx)),
        ("async vs sync save", lambda: t.async_vs_sync(ctx)),
        ("export to HF, logit parity", lambda: o.export_parity(ctx)),
        ("CMMLU speed, HF backend", lambda: o.cmmlu_speed(ctx)),
        ("TE spec throughput (bf16)", lambda: te_throughput(ctx)),
        ("TE spec FP8", lambda: o.te_fp8(ctx)),
        ("context parallel, 2 ranks", lambda: o.context_parallel(ctx)),
    ]


def te_throughput(ctx: Context):
    from bench.gpu_check import stages_train as t
    from megactllm.model import transformer_engine_available

    if not ctx.gpu:
        raise Skip("needs a GPU (Transformer Engine)")
    if not transformer_engine_available():
        raise Skip("Transformer Engine does not import here")
    return t.throughput(ctx, recompute=False, use_te=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="megactllm's GPU check: one row per stage (scripts/gpu_check.sh)")
    p.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU; GPU-only stages are skipped")
    p.add_argument("--output", type=Path, default=Path("gpu_check_out"))
    p.add_argument("--minutes", type=float, default=8.0, help="start no stage after this many minutes")
    p.add_argument("--cmmlu", type=Path, default=SHARED / "eval" / "cmmlu")
    p.add_argument("--eval-tokenizer", type=Path, default=SHARED / "tokenizers" / "map_neo_sp.model")
    p.add_argument("--only", help="comma-separated stage names (substrings) to run; the rest are skipped")
    p.add_argument("--wheels", type=Path, default=os.environ.get("MEGACTLLM_WHEELS") or None,
                   help="scripts/offline_wheels.sh's directory: build requirements (pybind11) are installed from it")
    a = p.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    gpu = not a.cpu
    if gpu and not torch.cuda.is_available():
        print("error: no CUDA device visible; pass --cpu for the CPU run", file=sys.stderr)
        return 2
    if a.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from megactllm.config import ParallelConfig
    from megactllm.parallel import initialize_parallel
    from megactllm.testing.distributed import free_port

    os.environ.setdefault("MASTER_PORT", str(free_port()))
    initialize_parallel(ParallelConfig())
    deadline = time.monotonic() + a.minutes * 60
    rows: list[Row] = []
    header = f"megactllm GPU check ({'CPU, tiny shapes' if a.cpu else 'GPU'}), {time.strftime('%Y-%m-%d %H:%M')}"
    with tempfile.TemporaryDirectory(prefix="megactllm-gpu-check-") as tmp:
        ctx = Context(REPO, Path(tmp), gpu, a.minutes, a.cmmlu if a.cmmlu.is_dir() else None, a.eval_tokenizer,
                      Path(a.wheels) if a.wheels else None)
        environment = {}
        for name, body in stages(ctx):
            if a.only and not any(s.strip() in name for s in a.only.split(",")):
                rows.append(Row(name, "skipped", 0.0, {}, "not asked for (--only)"))
            elif time.monotonic() > deadline:
                rows.append(Row(name, "skipped", 0.0, {}, f"the {a.minutes:g}-minute budget was spent"))
            else:
                rows.append(run_stage(name, body))
                if name == "environment":
                    environment = rows[-1].figures
            r = rows[-1]
            print(f"[gpu-check] {r.stage}: {r.status} ({r.seconds:.1f} s) {r.note}", flush=True)
            write(a.output, rows, environment, header)
    failed = [r.stage for r in rows if r.status == "failed"]
    print(f"[gpu-check] {len(rows)} stages: {sum(r.status == 'ok' for r in rows)} ok, {len(failed)} failed, "
          f"{sum(r.status == 'skipped' for r in rows)} skipped; table in {a.output / 'gpu_check.md'}", flush=True)
    # Every stage still runs after a failure, but the run as a whole is not a success then.
    if failed:
        print(f"error: {len(failed)} stage(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
