#!/usr/bin/env python
"""Benchmark: HF <-> megactllm conversion against plain safetensors I/O, at one or two depths.

Each phase runs in its own process (clean peak-memory figures) and prints wall time and peak
resident memory; ratios compare with the reference measured in the same run:
  baseline  read every tensor of the HF safetensors and write them back out (safetensors library,
            a shard at a time): the I/O any conversion must do. The ratios are against it.
  baseline+fsync  the same, each file fsynced as written: the part of a conversion's time that is
            waiting for the disk (a conversion's output is durable before it appears). The
            "vs +fsync" column compares with it: a durable conversion's floor where the disk writes
            slower than memory copies (on this VM, 0.4 to 2.5 GB/s from one run to the next).
  import    HF directory -> megactllm checkpoint (streamed a layer at a time, convert.importer).
  export    megactllm checkpoint -> HF directory (a layer at a time, 1 GiB safetensors shards).
  verify    the exported tensors equal the originals bit for bit (not timed).
Files are written in bf16 (as HF models ship). Every phase finds its input in the same state
(--inputs): "cold" (the default) drops the input files from the page cache before the clock starts,
as a conversion of a checkpoint written days ago reads it from disk; "warm" reads them into the
cache first. (The importer drops its own output from the cache, so without this the export would
read from disk while the baseline reads from memory.) Every export reads the first import's
checkpoint (later imports write a copy beside it): on this VM the first reads of files written
moments before cost far more than later reads (an export straight after its import took 11.7 s
and 19 s of CPU; of the same checkpoint once it had been read: 7.6-9.9 s and 11-14 s), and the
baseline's input has always been read by earlier phases. With --repeats 2 or more, each phase's
best is therefore measured on an input read before, as the others'. Library imports are done
before the clock starts (a fixed few seconds), and each phase starts after `sync` (no writeback of
the previous phase's files to wait for); a conversion fsyncs its own output before it appears, the
baseline does not. CPU seconds (the phase's process and its workers) are printed beside wall
time: on a shared machine they vary less. Memory is the peak of
the process's RSS plus its helper processes' unique memory, minus the RSS after imports: the
conversion's own working set, also shown relative to the model's size.

With two depths of the same widths (--layers 2 8) it also prints how the working set grows with
depth (issue 34's targets: the deeper peak within 0.5 GiB of the shallower one and below the
model's size; time at most 1.5x the baseline).

    python bench/convert.py --preset qwen2.5-7b --layers 2 8   # Qwen2.5-7B widths, 2 and 8 of its layers
    python bench/convert.py                  # ~500M parameters (28 layers, hidden 1024, vocab 64000)
    python bench/convert.py --preset 2b      # CT-LLM 2B shape (needs ~20 GB disk, several minutes)
    python bench/convert.py --preset tiny --layers 2 4   # smoke run
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = Path(os.environ.get("MEGACTLLM_SHARED_DATA", REPO.parent / "shared" / "data")) / "tokenizers" / "map_neo_sp.model"

PRESETS = {
    # 28 x 12.6M + 2 x 64000 x 1024 = 0.49B parameters
    "500m": dict(num_hidden_layers=28, hidden_size=1024, intermediate_size=2816, num_attention_heads=16),
    "2b": dict(num_hidden_layers=32, hidden_size=2048, intermediate_size=5504, num_attention_heads=16),
    "tiny": dict(num_hidden_layers=2, hidden_size=128, intermediate_size=352, num_attention_heads=4),
    # Qwen2.5-7B's real widths (QKV bias, 4 KV heads, 152,064 untied rows), 2 of its 28 layers: 1.56B parameters.
    "qwen2.5-7b": dict(family="qwen2", vocab_size=152064, num_hidden_layers=28, hidden_size=3584,
                       intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                       rope_theta=1000000.0, rms_norm_eps=1e-6),
    "qwen2.5-7b-2l": dict(family="qwen2", vocab_size=152064, num_hidden_layers=2, hidden_size=3584,
                          intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                          rope_theta=1000000.0, rms_norm_eps=1e-6),
}


def word_level_tokenizer(path: Path, vocab_size: int) -> None:
    """A tokenizer.json with exactly `vocab_size` ids (the conversion checks rows against ids); the
    benchmark measures the weights, so its pieces need not be real."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(vocab_size - 1)}
    vocab["<|endoftext|>"] = vocab_size - 1  # the end-of-document token the importer asks for
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer.save(str(path))


class MemorySampler:
    """Peak of this process's RSS plus its children's unique memory, sampled every 20 ms.

    megatron's checkpoint writer runs in helper processes, so the parent's own peak alone would
    under-count what a conversion needs.
    """

    def __init__(self):
        import psutil

        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        import psutil

        total = self.process.memory_info().rss
        for child in self.process.children(recursive=True):
            try:
                total += child.memory_full_info().uss
            except psutil.Error:  # a helper that just exited
                pass
        return total

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def __enter__(self):
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def phase_make_hf(work: Path, preset: str, tokenizer: Path, layers: str = "") -> dict:
    import torch
    import transformers

    values = dict(vocab_size=64000, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
    values.update(PRESETS[preset])
    if layers:
        values["num_hidden_layers"] = int(layers)
    family = values.pop("family", "llama")
    prefix = {"llama": "Llama", "qwen2": "Qwen2"}[family]
    config = getattr(transformers, f"{prefix}Config")(**values)
    torch.set_default_dtype(torch.bfloat16)
    torch.manual_seed(0)
    model = getattr(transformers, f"{prefix}ForCausalLM")(config)
    # Shards of 1 GB split layers across files, as HF's own 7B uploads do.
    model.save_pretrained(work / "hf_in", max_shard_size="1GB")
    if family == "llama":
        shutil.copy(tokenizer, work / "hf_in" / "tokenizer.model")
    else:
        word_level_tokenizer(work / "hf_in" / "tokenizer.json", values["vocab_size"])
    return dict(parameters=sum(p.numel() for p in model.parameters()))


def phase_baseline(work: Path, durable: bool = False) -> dict:
    from safetensors.torch import load_file, save_file

    from megactllm.common.atomic import fsync_path

    out = work / "baseline"
    out.mkdir()
    for shard in sorted((work / "hf_in").glob("*.safetensors")):
        save_file(load_file(shard), out / shard.name, metadata={"format": "pt"})
        if durable:  # as a conversion does before its output appears
            fsync_path(out / shard.name)
    return {}


def phase_baseline_fsync(work: Path) -> dict:
    return phase_baseline(work, durable=True)


def phase_import(work: Path, workers: int = 1) -> dict:
    from megactllm.convert import import_from_hf

    # The first import's checkpoint is kept for the export phases (see the module docstring).
    import_from_hf(work / "hf_in", work / ("ckpt_again" if (work / "ckpt").exists() else "ckpt"), workers=workers)
    return {}


def phase_export(work: Path, workers: int = 1) -> dict:
    from megactllm.convert import export_to_hf

    export_to_hf(work / "ckpt", work / "hf_out", max_shard_bytes=2**30, workers=workers)
    return {}


def phase_verify(work: Path) -> dict:
    import torch
    from safetensors import safe_open

    def tensors(directory: Path) -> dict:
        where = {}
        for shard in sorted(directory.glob("*.safetensors")):
            with safe_open(shard, "pt") as f:
                where.update({name: shard for name in f.keys()})
        return where

    before, after = tensors(work / "hf_in"), tensors(work / "hf_out")
    assert sorted(before) == sorted(after), "exported tensor names differ"
    for name, shard in before.items():
        with safe_open(shard, "pt") as a, safe_open(after[name], "pt") as b:
            if not torch.equal(a.get_tensor(name), b.get_tensor(name)):
                raise AssertionError(f"{name} differs after import + export")
    return dict(tensors=len(before))


PHASE_INPUTS = {"export": "ckpt"}  # the directory each phase reads (hf_in for the others)


def set_input_cache(directory: Path, state: str) -> None:
    """Put a phase's input files in the page cache ("warm") or out of it ("cold")."""
    from megactllm.common.atomic import drop_cached

    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if state == "cold":
            drop_cached(path)  # synced above, so every page can go
        else:
            with open(path, "rb", buffering=0) as f:
                while f.read(64 << 20):
                    pass


PHASES = {"make-hf": phase_make_hf, "baseline": phase_baseline, "baseline+fsync": phase_baseline_fsync,
          "import": phase_import, "export": phase_export, "verify": phase_verify}


def run_phase(name: str, work: Path, extra: list) -> dict:
    """Run one phase in a fresh interpreter; returns its measurements."""
    cmd = [sys.executable, __file__, "--phase", name, "--work", str(work), *extra]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    if done.returncode != 0:
        raise SystemExit(f"phase {name} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(args) -> None:
    # Library imports (a few seconds, the same for any model size) are not part of the measured work.
    from megactllm.output import configure_output

    configure_output(rank=0, cuda=False)  # the project's one filter: no "TE/Apex not installed" lines
    import megatron.core.dist_checkpointing  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from transformers import LlamaTokenizer, PreTrainedTokenizerFast  # noqa: F401  (lazy until first use)

    import megactllm.convert  # noqa: F401

    import resource

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.sync()  # the previous phase's dirty pages are not this phase's writeback to wait for
    if args.phase not in ("make-hf", "verify"):
        set_input_cache(args.work / PHASE_INPUTS.get(args.phase, "hf_in"), args.inputs)

    def cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    with MemorySampler() as memory:
        base = memory.now()
        start, cpu_start = time.perf_counter(), cpu()
        if args.phase == "make-hf":
            extra = phase_make_hf(args.work, args.preset, args.tokenizer, args.make_layers)
        elif args.phase in ("import", "export"):
            extra = PHASES[args.phase](args.work, args.workers[0])
        else:
            extra = PHASES[args.phase](args.work)
        seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu_start
    print(json.dumps(dict(seconds=seconds, cpu=cpu_seconds, peak=memory.peak, base=base, **extra)))


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(work: Path, args, layers: str) -> tuple[dict, int, int]:
    """Make the HF model at `layers` depth (preset's own when empty), run every phase; (results, bytes, params)."""
    made = run_phase("make-hf", work, ["--preset", args.preset, "--tokenizer", str(args.tokenizer),
                                       "--make-layers", layers])
    model_bytes = sum(f.stat().st_size for f in (work / "hf_in").glob("*.safetensors"))
    print(f"model: {made['parameters'] / 1e6:.0f}M parameters{f' ({layers} layers)' if layers else ''}, "
          f"{model_bytes / 2**30:.2f} GiB of bf16 safetensors, {args.inputs} inputs ({os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f})", flush=True)
    results = {}
    for _ in range(args.repeats):
        for workers in args.workers:
            for name in ("baseline", "baseline+fsync", "import", "export"):
                if name.startswith("baseline") and workers != args.workers[0]:
                    continue
                for leftover in ("baseline", "ckpt_again", "hf_out"):
                    shutil.rmtree(work / leftover, ignore_errors=True)
                r = run_phase(name, work, ["--workers", str(workers), "--inputs", args.inputs])
                label = name if workers == 1 or name.startswith("baseline") else f"{name}/{workers}w"
                if label not in results or r["seconds"] < results[label]["seconds"]:
                    results[label] = r
    run_phase("verify", work, [])
    base_time = results["baseline"]["seconds"]
    durable_time = results["baseline+fsync"]["seconds"]
    base_cpu = results["baseline"]["cpu"]
    print(f"{'phase':<14} {'seconds':>8} {'vs baseline':>12} {'vs +fsync':>10} {'CPU s':>7} {'CPU vs baseline':>16} "
          f"{'peak GiB':>9} {'working set GiB':>16} {'x model':>8}")
    for name, r in results.items():
        working = r["peak"] - r["base"]
        print(f"{name:<14} {r['seconds']:8.2f} {r['seconds'] / base_time:11.2f}x {r['seconds'] / durable_time:9.2f}x "
              f"{r['cpu']:7.2f} {r['cpu'] / base_cpu:15.2f}x "
              f"{r['peak'] / 2**30:9.2f} {working / 2**30:16.2f} {working / model_bytes:7.2f}x")
    print(f"megatron checkpoint: {_dir_bytes(work / 'ckpt') / 2**30:.2f} GiB; export verified bit-exact", flush=True)
    for leftover in ("hf_in", "baseline", "ckpt", "ckpt_again", "hf_out"):
        shutil.rmtree(work / leftover, ignore_errors=True)
    return results, model_bytes, made["parameters"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="500m")
    p.add_argument("--layers", nargs="*", type=int, default=[],
                   help="depths to measure at the preset's widths (two, e.g. 2 8, to see growth with depth)")
    p.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="SentencePiece model with 64,000 pieces")
    p.add_argument("--repeats", type=int, default=1, help="repeat baseline/import/export, keep the best time")
    p.add_argument("--workers", type=int, nargs="+", default=[1],
                   help="conversion processes (--workers of import and export); several, e.g. 1 2, to compare")
    p.add_argument("--inputs", choices=("cold", "warm"), default="cold",
                   help="each phase's input files out of the page cache (read from disk) or in it")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--make-layers", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        return child(args)
    if not args.tokenizer.is_file():
        raise SystemExit(f"tokenizer {args.tokenizer} is absent (set MEGACTLLM_SHARED_DATA or --tokenizer)")

    work = Path(tempfile.mkdtemp(prefix="megactllm-bench-convert-"))
    try:
        runs = [(str(n), *measure(work, args, str(n))) for n in (args.layers or [""])]
        if len(runs) == 2:
            (l1, r1, b1, _), (l2, r2, b2, _) = runs
            print(f"\ngrowth with depth, {l1} -> {l2} layers (model {b1 / 2**30:.2f} -> {b2 / 2**30:.2f} GiB):")
            print(f"{'phase':<14} {'working set GiB':>16} {'growth GiB':>11} {'deep x model':>13} {'time vs baseline':>17} "
                  f"{'CPU vs baseline':>16}")
            for name in r2:
                w1, w2 = (r[name]["peak"] - r[name]["base"] for r in (r1, r2))
                ratio = r2[name]["seconds"] / r2["baseline"]["seconds"]
                cpu_ratio = r2[name]["cpu"] / r2["baseline"]["cpu"]
                print(f"{name:<14} {w1 / 2**30:7.2f} -> {w2 / 2**30:5.2f} {(w2 - w1) / 2**30:11.2f} "
                      f"{w2 / b2:12.2f}x {ratio:16.2f}x {cpu_ratio:15.2f}x")
            print(f"(load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: wall times on a shared machine "
                  "depend on the other jobs; CPU seconds less so)")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
