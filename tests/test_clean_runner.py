"""Sharded stages: local vs SLURM array, SIGKILL and resume, bad input accounted for."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from megactllm.clean import STAGES, CleanConfig, Cleaner, run_all, run_stage, slurm_task
from megactllm.clean.runner import StageNotReady

REPO = Path(__file__).resolve().parents[1]


def make_corpus(shared_data, root: Path, shards=3, per_shard=150, seed=0):
    """Real CLUE documents in jsonl shards, plus an exact and a near duplicate in later shards."""
    docs = (shared_data / "corpus" / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines()
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    # Duplicated documents come from outside the shards' own range and pass every filter.
    cleaner = Cleaner(CleanConfig())
    long_docs = [d for d in docs[-200:] if len(d) > 150 and cleaner.clean(d).rule is None][:2]
    for s in range(shards):
        rows = [{"id": f"s{s}-{i}", "text": t, "url": f"https://site{s}.example/{i}"}
                for i, t in enumerate(docs[s * per_shard:(s + 1) * per_shard])]
        if s > 0:
            rows.append({"id": f"s{s}-exact", "text": long_docs[0]})
            near = list(long_docs[1])
            for p in rng.sample(range(len(near) - 1), max(1, len(near) // 60)):
                near[p] = "的"
            rows.append({"id": f"s{s}-near", "text": "".join(near)})
        with open(root / f"part{s}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return sorted(root.glob("*.jsonl"))


def config(inputs, out: Path, **run):
    return CleanConfig.from_dict({"input": {"paths": [str(p) for p in inputs]},
                                  "run": {"output_dir": str(out), "progress_interval_s": 1000, **run}})


def outputs(out: Path) -> dict[str, str]:
    """The final and side outputs of a run, by file name."""
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((out / "dedup").glob("*.jsonl"))} | \
        {"filter-" + p.name: p.read_text(encoding="utf-8") for p in sorted((out / "filter").glob("*.removed.jsonl"))}


def comparable_report(out: Path) -> dict:
    r = json.loads((out / "report.json").read_text(encoding="utf-8"))
    r.pop("recipe")
    r["output"].pop("files")
    return r


@pytest.fixture(scope="module")
def reference(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    inputs = make_corpus(shared_data, root / "in")
    cfg = config(inputs, root / "local", workers=2)
    run_all(cfg)
    return inputs, root / "local"


def test_local_run_removes_and_reports(reference):
    inputs, out = reference
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["accounting"]["balanced"]
    assert report["input"]["documents"] == 3 * 150 + 4
    rules = report["removed_by_rule"]
    assert rules["exact_dup"]["docs"] == 1 and rules["near_dup"]["docs"] == 1
    # The repetition rules fire on real text (MAP-CC's never did).
    assert sum(e["docs"] for r, e in rules.items() if r.startswith(("dup_", "top_"))) >= 1
    removed = [json.loads(line) for line in (out / "dedup" / "00002.removed.jsonl").read_text().splitlines()]
    assert {r["id"] for r in removed} >= {"s2-exact", "s2-near"}
    assert {r["id"]: r["duplicate_of"] for r in removed if r["rule"].endswith("_dup")} == \
        {"s2-exact": "s1-exact", "s2-near": "s1-near"}
    kept_ids = {json.loads(line)["id"] for p in (out / "dedup").glob("?????.jsonl") for line in p.read_text().splitlines()}
    assert "s1-exact" in kept_ids and "s2-exact" not in kept_ids
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "exact_dup" in md and "| cluster size |" in md and (out / "report_rules.png").exists()
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<table>" in page and '<img alt="cluster sizes" src="report_clusters.png">' in page


def test_slurm_array_gives_same_output(reference, tmp_path, monkeypatch):
    inputs, local = reference
    cfg = config(inputs, tmp_path / "slurm")
    for stage in STAGES:
        for task in range(3):  # each array task in turn, as SLURM would run them
            monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task + 1))
            monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
            monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
            assert slurm_task() == (task, 3)
            run_stage(cfg, stage, slurm_task())
    assert outputs(tmp_path / "slurm") == outputs(local)
    assert comparable_report(tmp_path / "slurm") == comparable_report(local)


def test_rerun_skips_finished_units(reference, tmp_path):
    inputs, local = reference
    cfg = config(inputs, local, workers=2)
    before = {p: p.stat().st_mtime_ns for p in (local / "dedup").glob("*.jsonl")}
    result = run_stage(cfg, "filter")
    assert result["done"] == [] and result["skipped"] == [0, 1, 2]
    run_all(cfg)
    assert {p: p.stat().st_mtime_ns for p in (local / "dedup").glob("*.jsonl")} == before


def test_stage_order_and_recipe_checks(reference, tmp_path):
    inputs, _ = reference
    cfg = config(inputs, tmp_path / "o")
    run_stage(cfg, "filter", (0, 3))
    with pytest.raises(StageNotReady, match=r"needs stage 'filter'.*2 of its units.*1, 2"):
        run_stage(cfg, "minhash")
    changed = config(inputs, tmp_path / "o")
    changed.filters.min_chars = 10
    with pytest.raises(ValueError, match="different recipe"):
        run_stage(changed, "filter")


def _cli(cfg_path: Path, *args):
    return [sys.executable, str(REPO / "tools" / "clean_corpus.py"), str(cfg_path), *args]


def test_sigkill_and_resume_gives_same_output(shared_data, reference, tmp_path):
    """SIGKILL the command while it filters, run it again: the result equals an uninterrupted run."""
    inputs, local = reference
    out = tmp_path / "killed"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"input": {"paths": [str(p) for p in inputs]},
                                  "run": {"output_dir": str(out), "workers": 2}}), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SLURM_ARRAY_TASK_ID", None)
    proc = subprocess.Popen(_cli(recipe), env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    workers = []
    while time.time() < deadline and not list((out / "filter").glob("*.done")):
        workers = workers or psutil.Process(proc.pid).children()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The pool's workers die with the runner instead of writing on as orphans.
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    # Usually lands inside the filter stage; at worst inside a later one. Either way the run
    # is interrupted with some unit unfinished.
    assert not (out / "report.json").exists()
    # Only *.tmp files can be partial: every file under its final name is complete.
    for path in (out / "filter").glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            json.loads(line)
    rc = subprocess.run(_cli(recipe), env=env, capture_output=True, text=True, timeout=120)
    assert rc.returncode == 0, rc.stderr
    assert "already done, skipped" in rc.stderr
    assert outputs(out) == outputs(local)
    assert comparable_report(out) == comparable_report(local)


def test_bad_input_counted_and_kept(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = ("今天上午，市政府召开新闻发布会，介绍了今年城市建设的主要进展。发布会上，有关负责人表示，"
            "全市新建道路一百二十公里，改造老旧小区三百多个，市民的出行和居住条件明显改善。")
    lines = [json.dumps({"text": good}, ensure_ascii=False).encode(),
             b'{"text": "unterminated',
             b'["a", "list"]',
             b'{"content": "no text field"}',
             b'{"text": 42}',
             b'{"text": "bad bytes \xff\xfe here"}',
             b'{"text": ""}',
             b'{"text": "' + "长".encode() * 3000 + b'"}',
             b"",
             json.dumps({"text": good + "另外，"}, ensure_ascii=False).encode()]
    (src / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (src / "b.txt").write_bytes(good.encode() + b"\n\xc3\x28 not utf-8\n")
    cfg = CleanConfig.from_dict({"input": {"paths": [str(src / "*")], "max_record_bytes": 4000},
                                 "run": {"output_dir": str(tmp_path / "out"), "progress_interval_s": 1000}})
    run_all(cfg)
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    bad = {k: v["records"] for k, v in report["bad_input"].items()}
    assert bad == {"bad_json": 2, "missing_text": 2, "bad_utf8": 2, "giant_record": 1}
    assert report["removed_by_rule"]["empty"]["docs"] == 1
    assert report["accounting"] == {"input_records": 11, "accounted_records": 11, "balanced": True}
    side = [json.loads(line) for p in sorted((tmp_path / "out" / "filter").glob("*.removed.jsonl"))
            for line in p.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["rule"] for r in side if "where" in r and r["rule"] in bad) == sorted(
        k for k, v in bad.items() for _ in range(v))
    wheres = {r["where"].rsplit("/", 1)[-1] for r in side}
    assert {"a.jsonl:2", "a.jsonl:6", "a.jsonl:8", "b.txt:2"} <= wheres
    assert any("\\xff" in r.get("raw", "") for r in side)


def test_candidate_verification(reference, tmp_path):
    inputs, _ = reference
    cfg = config(inputs, tmp_path / "v")
    cfg.dedup.verify_threshold = 0.999  # the injected near duplicate is further apart than this
    run_all(cfg)
    report = json.loads((tmp_path / "v" / "report.json").read_text(encoding="utf-8"))
    assert report["dedup"]["exact_duplicates"] == 1 and report["dedup"]["near_duplicates"] == 0


def test_cli_reports_recipe_errors(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("filters: {no_such_rule: 1}\n", encoding="utf-8")
    rc = subprocess.run(_cli(recipe), capture_output=True, text=True, timeout=60,
                        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert rc.returncode == 2 and "bad.yaml" in rc.stderr and "no_such_rule" in rc.stderr
