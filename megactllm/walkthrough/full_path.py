"""The whole CT-LLM path on the bundled sample, each stage starting from the previous one's output.

    clean -> tokenizer (with the chat tokens) -> tokenize -> pretrain (TP=2 x PP=2, 4 processes)
          -> evaluate (bits per byte on held-out documents, CMMLU subjects) -> sft (from the
          pretrained weights) -> dpo (from the SFT weights) -> export (HF) -> gguf (q4_0)
          -> serve (OpenAI-compatible server, one Chinese question through the openai client)

Every stage runs the same command a user would type (`python -m megactllm <command>`, torchrun -m
megactllm.train), so a stage's log (`<out>/<stage>/log.txt`) starts with a command one can copy, and
reads its figures from the files the stage wrote (a training run's metrics.jsonl, an evaluation's
results.json, the cleaner's report.json), never from console text. One tokenizer, the one
trained in stage 2, is used by every later stage, and the model shape is read back from each
checkpoint (the vocabulary size passed to training is the tokenizer's own).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .subprocesses import megactllm_cmd, run_logged, torchrun_cmd
from .figures import clean_summary, loss_summary
from .runner import Stage, StageResult

# The training run's own records (megactllm.training.run.metrics writes them into logging.dir).
METRICS_FILE = "metrics.jsonl"
QUESTION = "怎样才能保持健康？"  # asked of the exported model through its chat template


@dataclass
class FullPathSettings:
    """Sizes of the path. The defaults take a few minutes per training stage on 2 cores."""

    raw: str = "examples/data/raw_sample.jsonl"
    shared_data: str = "../shared/data"
    vocab_size: int = 2000             # the cleaned sample (~100 KB) supports about this many pieces
    pretrain_iters: int = 100
    pretrain_seq: int = 128
    sft_iters: Optional[int] = None    # None: one epoch of the 4:1 zh:en alpaca mixture (~60 iterations)
    sft_seq: int = 256
    dpo_iters: Optional[int] = None    # None: one epoch of the 600 preference pairs (36 iterations)
    dpo_seq: int = 128
    chat_processes: int = 1            # SFT and DPO load the TP2 x PP2 weights at TP1 x PP1
    heldout_every: int = 20            # every 20th cleaned document is kept out of pretraining for bpb
    cmmlu_subjects: tuple = ("chinese_food_culture", "elementary_chinese", "high_school_geography")
    cmmlu_limit: Optional[int] = None  # questions per subject (None: all 509 of the three)
    gguf_type: str = "q4_0"

    @classmethod
    def quick(cls, **overrides) -> "FullPathSettings":
        """The shortened path the test runs: every stage, fewer iterations."""
        return cls(**{"pretrain_iters": 30, "sft_iters": 10, "dpo_iters": 6, "cmmlu_limit": 10, **overrides})


class FullPath:
    def __init__(self, repo: Path, out: Path, settings: FullPathSettings, verbose: bool = False,
                 say: Callable[[str], None] = print):
        self.repo = repo.resolve()
        self.out = out.resolve()
        self.s = settings
        self.verbose = verbose
        self.say = say
        self.shared = (self.repo / settings.shared_data).resolve()

    # Where each stage leaves what the next one reads.
    @property
    def clean_jsonl(self) -> Path:
        return self.out / "clean" / "corpus" / "dedup" / "00000.jsonl"

    @property
    def tokenizer_model(self) -> Path:
        return self.out / "tokenizer" / "zh_sample.model"

    @property
    def text_prefix(self) -> Path:
        return self.out / "tokenize" / "sample_text_document"

    @property
    def heldout_jsonl(self) -> Path:
        return self.out / "tokenize" / "heldout.jsonl"

    @property
    def gguf_file(self) -> Path:
        return self.out / "gguf" / f"zh_sample-{self.s.gguf_type}.gguf"

    def checkpoints(self, stage: str) -> Path:
        return self.out / stage / "checkpoints"

    def settings_dict(self) -> dict:
        """Settings every stage depends on (none: each stage names its own in stages())."""
        return {}

    def stages(self) -> list[Stage]:
        s = asdict(self.s)

        def own(*keys):  # a stage is redone when one of these changes (and every stage after it)
            return {k: s[k] for k in keys}

        chat = ("shared_data", "chat_processes")
        return [
            Stage("clean", "MAP-CC filters, exact and MinHash dedup of the raw sample", self.clean, own("raw")),
            Stage("tokenizer", "SentencePiece BPE with the chat tokens", self.tokenizer, own("vocab_size")),
            Stage("tokenize", "cleaned text -> Megatron .bin/.idx, a few documents held out", self.tokenize,
                  own("heldout_every")),
            Stage("pretrain", "tiny model, TP=2 x PP=2 on 4 CPU processes", self.pretrain,
                  own("pretrain_iters", "pretrain_seq")),
            Stage("evaluate", "bits per byte on held-out documents, CMMLU subjects", self.evaluate,
                  own("shared_data", "cmmlu_subjects", "cmmlu_limit")),
            Stage("sft", "alpaca zh:en = 4:1 from the pretrained weights", self.sft, own("sft_iters", "sft_seq", *chat)),
            Stage("dpo", "preference pairs from the SFT weights", self.dpo, own("dpo_iters", "dpo_seq", *chat)),
            Stage("export", "Hugging Face LLaMA directory, loaded back with transformers", self.export),
            Stage("gguf", "one GGUF file for llama.cpp, quantized", self.gguf, own("gguf_type")),
            Stage("serve", "OpenAI-compatible server on the GGUF, one question, stop", self.serve),
        ]

    def _run(self, stage_dir: Path, cmd: list, env: Optional[dict] = None, metrics: Optional[Path] = None) -> None:
        run_logged(cmd, stage_dir / "log.txt", cwd=self.repo, env=env, verbose=self.verbose, say=self.say,
                   metrics=metrics)

    def _need(self, path: Path, what: str) -> Path:
        if not path.exists():
            raise FileNotFoundError(f"{path} ({what}) is absent")
        return path

    # 1. clean
    def clean(self, d: Path) -> StageResult:
        raw = self._need(self.repo / self.s.raw, "the raw sample; examples/data/make_raw_sample.py writes it")
        self._run(d, megactllm_cmd(
            "clean", self.repo / "examples" / "clean" / "mapcc.yaml", f"input.paths=[{raw}]",
            f"run.output_dir={d / 'corpus'}",
            # The sample is zh and en: keep both languages (MAP-CC itself kept only Chinese).
            "filters.min_zh_char_ratio=null", "filters.languages=[zh,en]",
            # The sample's documents are drawn from small sentence banks and share sentences;
            # confirm each MinHash candidate pair so that only real copies count as near duplicates.
            "dedup.verify_threshold=0.8", "--workers", "1"))
        c = clean_summary(d / "corpus" / "report.json")
        if not c["balanced"]:
            raise ValueError(f"{d / 'corpus' / 'report.json'}: records do not add up")
        figure = (f"{c['input']} records -> {c['kept']} kept: {c['exact_dup']} exact + {c['near_dup']} near dups, "
                  f"{c['filtered']} junk, {c['bad_records']} bad records")
        return StageResult(figure, str(self._need(self.clean_jsonl, "cleaned corpus")), c)

    # 2. tokenizer
    def tokenizer(self, d: Path) -> StageResult:
        from megactllm.tokenizer import load_tokenizer
        from megactllm.tokenizer.train import CHAT_PIECES

        prefix = str(self.tokenizer_model)[: -len(".model")]
        self._run(d, megactllm_cmd("train-tokenizer", "train", "--input", self.clean_jsonl, "--model-prefix", prefix,
                                "--vocab-size", self.s.vocab_size, "--threads", 1))
        tok = load_tokenizer("sentencepiece", str(self.tokenizer_model))
        ids = {p: tok.encode(p) for p in CHAT_PIECES}
        if any(len(v) != 1 for v in ids.values()):
            raise ValueError(f"{self.tokenizer_model}: chat pieces do not encode as single tokens: {ids}")
        figure = f"{tok.vocab_size:,} pieces, " + ", ".join(f"{p}={v[0]}" for p, v in ids.items())
        return StageResult(figure, str(self.tokenizer_model), {"vocab_size": tok.vocab_size})

    # 3. tokenize
    def tokenize(self, d: Path) -> StageResult:
        from megactllm.data.pretrain.dataset_stats import dataset_stats

        lines = self.clean_jsonl.read_text(encoding="utf-8").splitlines(keepends=True)
        heldout = lines[self.s.heldout_every - 1::self.s.heldout_every]  # never seen in pretraining
        train = [line for i, line in enumerate(lines) if (i + 1) % self.s.heldout_every]
        (d / "train.jsonl").write_text("".join(train), encoding="utf-8")
        self.heldout_jsonl.write_text("".join(heldout), encoding="utf-8")
        self._run(d, megactllm_cmd("tokenize", "--input", d / "train.jsonl", "--tokenizer-type", "sentencepiece",
                                "--tokenizer-model", self.tokenizer_model, "--append-eod",
                                "--output-prefix", d / "sample", "--workers", 1))
        stats = dataset_stats(str(self.text_prefix))
        figure = f"{stats.documents} documents, {stats.tokens:,} tokens ({len(heldout)} documents held out)"
        return StageResult(figure, str(self.text_prefix), {"documents": stats.documents, "tokens": stats.tokens,
                                                           "heldout_documents": len(heldout)})

    def _vocab(self) -> int:
        from megactllm.tokenizer import load_tokenizer

        return load_tokenizer("sentencepiece", str(self.tokenizer_model)).vocab_size

    def _train(self, d: Path, nproc: int, config: str, overrides: list[str]) -> dict:
        """One torchrun of megactllm.train; returns its loss summary from metrics.jsonl."""
        common = [f"model.vocab_size={self._vocab()}", f"data.tokenizer_model={self.tokenizer_model}",
                  f"checkpoint.save={d / 'checkpoints'}", "checkpoint.load=null", f"logging.dir={d}",
                  f"logging.tensorboard_dir={d / 'tensorboard'}"]
        # One intra-op thread per process unless the user says otherwise: on a small shared machine
        # more threads than free cores make torch's thread pool spin (seen: 30x slower SFT steps).
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self._run(d, torchrun_cmd(nproc, "-m", "megactllm.train", "--config",
                                  self.repo / "examples" / "configs" / config, *common, *overrides),
                  env=env, metrics=d / METRICS_FILE)
        self._need(d / "checkpoints" / "latest_checkpointed_iteration.txt", "the run's final checkpoint")
        return loss_summary(d)

    # 4. pretrain
    def pretrain(self, d: Path) -> StageResult:
        n = self.s.pretrain_iters
        summary = self._train(d, 4, "tiny_cpu.yaml", [
            f"data.data_path=[{self.text_prefix}]", f"data.data_cache_path={d / 'data_cache'}",
            "parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2",
            f"model.seq_length={self.s.pretrain_seq}", f"model.max_position_embeddings={self.s.pretrain_seq}",
            f"train.duration={n} iterations", f"checkpoint.interval={n}", f"validation.interval={max(1, n // 2)}",
            f"logging.interval={max(1, min(10, n // 3))}"])
        figure = f"loss {summary['first_loss']:.2f} -> {summary['last_loss']:.2f} in {n} iters"
        if "valid_ppl" in summary:
            figure += f", valid ppl {summary['valid_ppl']:.1f}"
        return StageResult(figure, str(d / "checkpoints"), summary)

    # 5. evaluate
    def evaluate(self, d: Path) -> StageResult:
        import json

        limit = ["--limit", self.s.cmmlu_limit] if self.s.cmmlu_limit else []
        self._run(d, megactllm_cmd(
            "evaluate", "--model", self.checkpoints("pretrain"), "--tasks", "cmmlu,bpb",
            "--data-dir", self._need(self.shared / "eval", "shared evaluation data"),
            "--subjects", ",".join(self.s.cmmlu_subjects), "--corpus", self.heldout_jsonl,
            "--output", d / "results.json", *limit), env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        results = json.loads(self._need(d / "results.json", "evaluation results").read_text(encoding="utf-8"))["results"]
        bpb = results["bpb_heldout"]["bits_per_byte"]
        cmmlu = {k: v for k, v in results.items() if k.startswith("cmmlu_")}
        n = sum(v["n"] for v in cmmlu.values())
        acc = sum(v["acc"] * v["n"] for v in cmmlu.values()) / n
        figure = (f"held-out bits per byte {bpb:.2f}; CMMLU acc {acc:.2f} on {n} questions of "
                  f"{len(cmmlu)} subjects (chance 0.25)")
        return StageResult(figure, str(d / "results.json"), {"bits_per_byte": bpb, "cmmlu_acc": acc,
                                                             "cmmlu_questions": n, "subjects": sorted(cmmlu)})

    def _chat_data(self, d: Path, kind: str, seq: int) -> list[str]:
        """Tokenizes the shared zh and en SFT or DPO demo sets with the path's tokenizer."""
        tool, sub, stem = (("preprocess-sft", "sft", "alpaca_{}_demo.json") if kind == "sft"
                           else ("preprocess-dpo", "dpo", "dpo_{}_demo.json"))
        prefixes = []
        for lang in ("zh", "en"):
            src = self._need(self.shared / sub / stem.format(lang), "shared demo data; set MEGACTLLM_SHARED_DATA")
            prefix = d / "data" / f"{kind}_{lang}"
            self._run(d, megactllm_cmd(tool, "--input", src, "--output-prefix", prefix, "--language", lang,
                                    "--seq-length", seq, "--tokenizer-type", "sentencepiece",
                                    "--tokenizer-model", self.tokenizer_model))
            prefixes.append(str(prefix))
        return prefixes

    # 6. sft
    def sft(self, d: Path) -> StageResult:
        zh, en = self._chat_data(d, "sft", self.s.sft_seq)
        summary = self._train(d, self.s.chat_processes, "tiny_sft.yaml", [
            f"data.data_path=[4,{zh},1,{en}]", f"checkpoint.pretrained={self.checkpoints('pretrain')}",
            f"model.seq_length={self.s.sft_seq}", f"model.max_position_embeddings={self.s.sft_seq}",
            *_length(self.s.sft_iters, log_every=10)])
        figure = f"loss {summary['first_loss']:.2f} -> {summary['last_loss']:.2f} in {summary['iterations']} iters"
        if "valid_ppl" in summary:
            figure += f", valid ppl {summary['valid_ppl']:.0f}"
        return StageResult(figure, str(d / "checkpoints"), summary)

    # 7. dpo
    def dpo(self, d: Path) -> StageResult:
        zh, en = self._chat_data(d, "dpo", self.s.dpo_seq)
        summary = self._train(d, self.s.chat_processes, "tiny_dpo.yaml", [
            f"data.data_path=[{zh},{en}]", f"checkpoint.pretrained={self.checkpoints('sft')}",
            f"model.seq_length={self.s.dpo_seq}", f"model.max_position_embeddings={self.s.dpo_seq}",
            *_length(self.s.dpo_iters, log_every=5)])
        valid = summary.get("valid", {})
        figure = f"dpo loss {summary['first_loss']:.2f} -> {summary['last_loss']:.2f} in {summary['iterations']} iters"
        if "rewards/accuracy" in valid:
            figure += f", valid reward accuracy {valid['rewards/accuracy']:.2f}, margin {valid['rewards/margin']:+.2f}"
        return StageResult(figure, str(d / "checkpoints"), summary)

    # 8. export
    def export(self, d: Path) -> StageResult:
        hf = d / "hf"
        self._run(d, megactllm_cmd("convert", "export", self.checkpoints("dpo"), hf))
        from .hf_check import ask_hf_model

        answer = ask_hf_model(hf, QUESTION)
        self.say(f"      {QUESTION} -> {answer['answer']!r}")
        figure = f"{answer['architecture']}, {answer['parameters']:,} params, loads in transformers and answers"
        return StageResult(figure, str(hf), answer)

    # 9. gguf
    def gguf(self, d: Path) -> StageResult:
        self._run(d, megactllm_cmd("export-gguf", self.out / "export" / "hf", self.gguf_file,
                                "--outtype", self.s.gguf_type, "--threads", 1))
        types = _gguf_types(self._need(self.gguf_file, "the GGUF file"))
        size = self.gguf_file.stat().st_size
        figure = f"{self.s.gguf_type}, {size / 1024:.0f} KiB, tensors " + ", ".join(f"{n} {t}" for t, n in sorted(types.items()))
        return StageResult(figure, str(self.gguf_file), {"bytes": size, "tensor_types": types})

    # 10. serve
    def serve(self, d: Path) -> StageResult:
        from .serve_check import ask_server

        reply = ask_server(self.gguf_file, QUESTION, d / "log.txt", self.repo)
        self.say(f"      {QUESTION} -> {reply['answer']!r}")
        figure = (f"{reply['completion_tokens']} tokens in {reply['seconds']:.1f} s from {reply['url']}"
                  f"/v1/chat/completions, server stopped")
        return StageResult(figure, str(d / "log.txt"), reply)


def _gguf_types(path: Path) -> dict:
    """How many tensors of each type the GGUF file holds (read with gguf, llama.cpp's own package)."""
    from collections import Counter

    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors))


def _length(iters: Optional[int], log_every: int) -> list[str]:
    """Overrides for a chat stage's length: a number of iterations, or one epoch (the recipe's)."""
    if iters is None:
        return ["train.duration=1 epochs", "checkpoint.interval=100000", "validation.interval=20",
                f"logging.interval={log_every}"]
    return ["train.duration=null", f"train.duration={iters} iterations", f"checkpoint.interval={iters}",
            f"validation.interval={max(1, iters // 2)}", f"logging.interval={max(1, min(log_every, iters // 3))}"]


def default_out(repo: Path) -> Path:
    return Path(os.environ.get("MEGACTLLM_FULL_PATH_OUT", repo / "runs" / "full_path"))
