"""Build, environment, SDPA kernels, HF export parity, CMMLU speed, Transformer Engine rows."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.gpu_check.context import Context
from bench.gpu_check.report import Skip

# Dense bf16 peaks (TFLOP/s, without sparsity) by device name; the first match wins.
BF16_PEAKS = (("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0),
              ("H20", 148.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
              ("A10", 125.0), ("L4", 121.0), ("4090", 165.0))
SDPA_KERNELS = {"flash": "flash", "efficient": "memory-efficient", "cudnn": "cuDNN", "math": "math"}


def _pybind11_env(ctx: Context) -> tuple[dict, str]:
    """The environment setup.py builds in. Where pybind11 was only a build-isolation requirement of
    `pip install -e .` (the offline wheels' install), it is not importable here: install it from
    the wheels directory (--wheels, else the package index) into a scratch folder on PYTHONPATH."""
    env = dict(os.environ)
    try:
        import pybind11  # noqa: F401
        return env, ""
    except ImportError:
        pass
    target = ctx.work / "build-requirements"
    source = ["--no-index", "--find-links", str(ctx.wheels)] if ctx.wheels else []
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                          *source, "pybind11"], capture_output=True, text=True)
    if out.returncode != 0:
        where = f"the wheels in {ctx.wheels}" if ctx.wheels else "the package index (offline? pass --wheels DIR)"
        raise RuntimeError(f"pybind11 is not installed and could not be installed from {where}: "
                           f"{out.stderr.strip()[-400:]}")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    return env, f"; pybind11 from {ctx.wheels or 'the package index'}"


def build_extensions(ctx: Context) -> tuple[dict, str]:
    start = time.perf_counter()
    env, note = _pybind11_env(ctx)
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ctx.repo, capture_output=True,
                         text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"setup.py build_ext failed: {out.stderr.strip()[-600:]}")
    seconds = time.perf_counter() - start
    built = out.stdout.count("building '")
    import importlib

    names = sorted(p.stem.split(".")[0] for p in (ctx.repo / "csrc").glob("*.cpp"))
    for name in names:
        importlib.import_module(f"megactllm._{name}")
    return ({"extensions": len(names), "compiled": built, "build s": seconds},
            f"python setup.py build_ext --inplace; imported {', '.join('_' + n for n in names)}{note}")


def peak_tflops(name: str):
    return next((peak for key, peak in BF16_PEAKS if key in name), None)


def environment(ctx: Context) -> tuple[dict, str]:
    import megatron.core

    figures = {"python": sys.version.split()[0], "torch": torch.__version__, "megatron-core": megatron.core.__version__,
               "CUDA": torch.version.cuda or "none",
               "GPUs": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        figures.update({"GPU": name, "capability": "%d.%d" % torch.cuda.get_device_capability(),
                        "memory GiB": torch.cuda.get_device_properties(0).total_memory / 2**30,
                        "bf16 peak TFLOP/s": peak_tflops(name) or "unknown", "bf16": torch.cuda.is_bf16_supported()})
    from megactllm.model import transformer_engine_available

    figures["Transformer Engine"] = transformer_engine_available()
    return figures, "GPU" if torch.cuda.is_available() else "no GPU visible (CPU run)"


def _sdpa_ops(fn) -> list[str]:
    """The scaled-dot-product kernels (aten ops) that run inside fn()."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sorted({e.name for e in prof.events() if "scaled_dot_product" in e.name or "attention" in e.name.lower()
                   and e.name.startswith("aten::_")})


def _kernel_name(ops: list[str]) -> str:
    for key, label in SDPA_KERNELS.items():
        if any(key in op for op in ops):
            return label
    return "unknown: " + ",".join(ops)


def sdpa_kernels(ctx: Context) -> tuple[dict, str]:
    """megactllm's SDPAttention forward and backward: which fused kernel each case runs."""
    from megatron.core.transformer.enums import AttnMaskType

    from megactllm.config import load_config
    from megactllm.model import build_transformer_config
    from megactllm.model.sdpa_attention import SDPAttention

    device = "cuda" if ctx.gpu else "cpu"
    dtype = torch.bfloat16 if ctx.gpu else torch.float32
    seq, heads, dim = (4096, 16, 128) if ctx.gpu else (128, 4, 32)
    figures = {}
    for case, groups, documents in (("causal", heads, False), ("document resets", heads, True),
                                    ("GQA", heads // 4, False), ("GQA + document resets", heads // 4, True)):
        cfg = load_config(None, ["model.arch=tiny", f"model.hidden_size={heads * dim}", f"model.num_attention_heads={heads}",
                                 f"model.num_query_groups={groups}", f"model.seq_length={seq}"])
        attention = SDPAttention(build_transformer_config(cfg.model, cfg.parallel, cfg.optim), 1, AttnMaskType.causal, "self")
        q = torch.randn(seq, 1, heads, dim, device=device, dtype=dtype, requires_grad=True)
        k, v = (torch.randn(seq, 1, groups, dim, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
        mask = None
        if documents:  # two documents: causal inside each, nothing across (True = masked, megatron's way)
            causal = torch.ones(seq, seq, dtype=torch.bool, device=device).triu(1)
            doc = torch.arange(seq, device=device) >= seq // 2
            mask = (causal | (doc[:, None] != doc[None, :]))[None, None]

        def step():
            attention(q, k, v, mask).float().sum().backward()

        figures[case] = _kernel_name(_sdpa_ops(step))
    return figures, f"{'bf16 GPU' if ctx.gpu else 'fp32 CPU'}, seq {seq}, {heads} heads x {dim}, forward + backward"


def export_parity(ctx: Context) -> tuple[dict, str]:
    """A trained tiny checkpoint exported to HF: the HF model's logits against megactllm's own."""
    from megactllm.config import load_config
    from megactllm.convert.export import export_to_hf
    from transformers import AutoModelForCausalLM

    from bench.gpu_check.stages_train import _tiny_overrides, _trainer

    ckpt = ctx.work / "export_ckpt"
    precision = ("optim.bf16=true",) if ctx.gpu else ()
    overrides = _tiny_overrides(ctx, "export_run", 2, (f"checkpoint.save={ckpt}", "checkpoint.interval=2", *precision))
    trainer = _trainer(overrides)
    trainer.fit()
    seq = load_config(None, overrides).model.seq_length
    tokens = torch.randint(3, 256, (2, seq), generator=torch.Generator().manual_seed(0)).to(trainer.device)
    positions = torch.arange(seq, device=trainer.device).unsqueeze(0).expand(2, -1)
    model = trainer.model[0]
    model.eval()
    with torch.no_grad():
        ours = model(tokens, positions, None).float()
    out = ctx.work / "export_hf"
    export_to_hf(ckpt, out, overwrite=True, progress_stream=None)
    dtype = torch.bfloat16 if ctx.gpu else torch.float32
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=dtype, local_files_only=True).to(trainer.device).eval()
    with torch.no_grad():
        theirs = hf(tokens).logits.float()
    theirs = theirs[..., : ours.shape[-1]]
    ours = ours[..., : theirs.shape[-1]]
    diff = (ours - theirs).abs().max().item()
    scale = ours.abs().max().item()
    # bf16: 2^-8 relative per rounding, a few roundings per layer; fp32: agreement to rounding noise.
    tolerance = (0.05 if ctx.gpu else 1e-3) * max(scale, 1.0)
    figures = {"max |logit diff|": diff, "max |logit|": scale, "tolerance": tolerance,
               "argmax agreement": (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()}
    if diff > tolerance:
        raise AssertionError(f"exported logits differ by {diff:.4g} > {tolerance:.4g}")
    return figures, f"{'bf16 on the GPU' if ctx.gpu else 'fp32 on the CPU'}: transformers' model from export_to_hf vs megactllm's forward"


def cmmlu_speed(ctx: Context) -> tuple[dict, str]:
    """CMMLU questions/s of the HF backend (bf16 on a GPU) on a random LLaMA of about ctllm-2b's size."""
    if ctx.cmmlu is None or not (ctx.cmmlu / "test").is_dir():
        raise Skip(f"no CMMLU data (dev/ and test/ csv files): pass --cmmlu DIR")
    if ctx.eval_tokenizer is None or not ctx.eval_tokenizer.is_file():
        raise Skip("no SentencePiece model for the random LLaMA: pass --eval-tokenizer FILE")
    from bench.eval import random_llama
    import bench.eval as bench_eval

    from megactllm.eval import evaluate_subjects, load_benchmark
    from megactllm.eval.backends.hf import HFBackend

    layers, hidden, total = (32, 2048, 200) if ctx.gpu else (2, 128, 4)
    bench_eval.SHARED = ctx.eval_tokenizer.parents[1]  # random_llama copies tokenizers/map_neo_sp.model from there
    model_dir = random_llama(ctx.work / "eval_llama", layers, hidden)
    subjects = sorted(p.stem for p in (ctx.cmmlu / "test").glob("*.csv"))[:4]
    per_subject = -(-total // len(subjects))
    backend = HFBackend(model_dir, dtype="bf16" if ctx.gpu else "fp32", batch_size=16 if ctx.gpu else 4)
    loaded = load_benchmark("cmmlu", str(ctx.cmmlu), subjects, shots=5)
    start = time.perf_counter()
    result = evaluate_subjects(backend, loaded, shots=5, limit=per_subject, progress_stream=None)
    seconds = time.perf_counter() - start
    questions = per_subject * len(subjects)
    return ({"questions": questions, "questions/s": questions / seconds, "layers": layers, "hidden": hidden},
            f"5-shot, {len(subjects)} subjects, {'bf16' if ctx.gpu else 'fp32'}, random weights ({type(result).__name__})")


def te_fp8(ctx: Context) -> tuple[dict, str]:
    if not ctx.gpu:
        raise Skip("needs a GPU (Transformer Engine)")
    from megactllm.model import transformer_engine_available

    if not transformer_engine_available():
        raise Skip("Transformer Engine does not import here")
    raise Skip("megactllm has no FP8 training option yet: the TE spec runs in bf16 only")


def context_parallel(ctx: Context) -> tuple[dict, str]:
    if not ctx.gpu:
        raise Skip("needs two GPUs and Transformer Engine")
    if torch.cuda.device_count() < 2:
        raise Skip(f"needs two GPUs ({torch.cuda.device_count()} visible)")
    raise Skip("the 2-rank context-parallel run is not part of this check yet (the SDPA spec refuses CP; TE only)")
