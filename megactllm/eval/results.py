"""results.json (lm-eval task names as keys, plus group averages) and a Markdown table beside it.

    {"results": {"cmmlu_agronomy": {"acc": 0.31, "acc_norm": 0.31, "n": 169, "category": "Other"}, ...,
                 "bpb_clue_small_zh": {"bits_per_byte": 1.9, ...}},
     "groups": {"cmmlu": {"acc_micro": .., "acc_macro": .., "n": .., "subjects": ..}, "cmmlu/STEM": {...}},
     "config": {"model": .., "backend": .., "shots": .., "mode": .., ...},
     "samples": {...}    # with --log-samples}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from megactllm.common.atomic import write_text_atomic
from megactllm.eval.scoring import SubjectScore, aggregate


def build_results(scores: list[SubjectScore], bpb: Optional[dict] = None, config: Optional[dict] = None,
                  samples: Optional[dict] = None) -> dict:
    results = {}
    for s in scores:
        results[s.task] = {**s.metrics, "n": s.n, "category": s.category}
        if "acc_generate" in s.metrics:
            results[s.task]["unparsed"] = s.unparsed
    for name, value in (bpb or {}).items():
        results[f"bpb_{name}"] = value
    out = {"results": results, "groups": aggregate(scores) if scores else {}, "config": config or {}}
    if samples:
        out["samples"] = samples
    return out


def markdown_table(results: dict) -> str:
    lines = []
    tasks = {k: v for k, v in results["results"].items() if "category" in v}
    if tasks:
        metrics = sorted({m for v in tasks.values() for m in v if m.startswith("acc")})
        lines += ["| task | category | n | " + " | ".join(metrics) + " |", "|---|---|---:|" + "---:|" * len(metrics)]
        for name, v in tasks.items():
            lines.append(f"| {name} | {v['category']} | {v['n']} | " + " | ".join(_pct(v.get(m)) for m in metrics) + " |")
    if results.get("groups"):
        metrics = sorted({m for v in results["groups"].values() for m in v if m.startswith("acc")})
        lines += ["", "| group | subjects | n | " + " | ".join(metrics) + " |", "|---|---:|---:|" + "---:|" * len(metrics)]
        for name, v in results["groups"].items():
            lines.append(f"| {name} | {v['subjects']} | {v['n']} | " + " | ".join(_pct(v.get(m)) for m in metrics) + " |")
    corpora = {k: v for k, v in results["results"].items() if "bits_per_byte" in v}
    if corpora:
        lines += ["", "| corpus | documents | tokens | bytes | bits/byte | token ppl |", "|---|---:|---:|---:|---:|---:|"]
        for name, v in corpora.items():
            lines.append(f"| {name} | {v['documents']} | {v['tokens']} | {v['bytes']} | {v['bits_per_byte']:.4f} | {v['token_perplexity']:.2f} |")
    maths = {k: v for k, v in results["results"].items() if "answers_file" in v and "accuracy" in v}
    if maths:
        lines += ["", "| math task | problems | correct | accuracy |", "|---|---:|---:|---:|"]
        for name, v in maths.items():
            lines.append(f"| {name} | {v['n']} | {v['correct']} | {_pct(v['accuracy'])} |")
    generations = {k: v for k, v in results["results"].items() if "answers_file" in v and "judge" in v}
    if generations:
        lines += ["", "| generation task | answers | mean rating | judge |", "|---|---:|---:|---|"]
        for name, v in generations.items():
            rating = "" if v.get("mean_rating") is None else f"{v['mean_rating']:.2f}"
            lines.append(f"| {name} | {v['n']} | {rating} | {v['judge']} |")
    return "\n".join(lines) + "\n"


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def write_results(results: dict, path) -> tuple[Path, Path]:
    """results.json and results.md, each written to a temporary file and renamed (no half files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    md = path.with_suffix(".md")
    for target, text in ((path, json.dumps(results, indent=2, ensure_ascii=False)), (md, markdown_table(results))):
        write_text_atomic(target, text)
    return path, md
