"""Reads the key figures of finished stages from the files they wrote (never from their console)."""
from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """The training and validation records of a run's metrics.jsonl (megactllm.training.run.metrics)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is absent: the training run wrote no metrics")
    train, valid = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
        (valid if record.get("kind") == "valid" else train).append(record)
    if not train:
        raise ValueError(f"{path} holds no training record")
    return train, valid


def loss_summary(run_dir: Path) -> dict:
    """First and last logged training loss, and the last validation metrics."""
    train, valid = read_metrics(run_dir)
    out = {"iterations": train[-1]["iteration"], "first_loss": train[0]["loss"], "last_loss": train[-1]["loss"],
           "first_iteration": train[0]["iteration"], "loss_name": train[-1].get("loss_name", "lm loss"),
           "tokens": train[-1]["consumed_tokens"]}
    if valid:
        out["valid"] = valid[-1]["metrics"]
        if "ppl" in valid[-1]:
            out["valid_ppl"] = valid[-1]["ppl"]
    return out


def clean_summary(report_json: Path) -> dict:
    """Documents in and out of the cleaner, by what removed them (its report.json)."""
    s = json.loads(report_json.read_text(encoding="utf-8"))
    rules = {name: entry["docs"] for name, entry in s["removed_by_rule"].items()}
    exact = rules.get("exact_dup", 0)
    near = rules.get("near_dup", 0)
    return {
        "input": s["input"]["documents"], "kept": s["output"]["documents"], "exact_dup": exact, "near_dup": near,
        "filtered": sum(n for k, n in rules.items() if k not in ("exact_dup", "near_dup")),
        "bad_records": sum(e["records"] for e in s["bad_input"].values()), "rules": rules,
        "balanced": s["accounting"]["balanced"],
    }
