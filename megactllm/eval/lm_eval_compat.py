"""lm-eval 0.4's own task configs pointed at local files, for cross-checking megactllm's scores
offline (tests/test_eval_lm_eval.py, bench/eval.py). lm-eval is a test dependency, imported here
only when called.

    name = lm_eval_task_yaml(tasks_dir, "cmmlu", Path("../shared/data/eval/cmmlu"), "agronomy")
    lm_eval.simple_evaluate(model=HFLM(...), tasks=[name], task_manager=TaskManager(include_path=str(tasks_dir)))
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml


def _installed_task_yaml(benchmark_dir: str, name: str) -> tuple[dict, dict]:
    """lm-eval's own (template, subject) YAML for a task, read from the installed package."""
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks" / benchmark_dir
    subject = yaml.safe_load((root / f"{name}.yaml").read_text(encoding="utf-8"))
    template = yaml.safe_load((root / subject["include"]).read_text(encoding="utf-8"))
    return template, subject


def lm_eval_task_yaml(out_dir: Path, benchmark: str, data_dir: Path, subject: str) -> str:
    """A local lm-eval task equal to lm-eval's own (prompts, description, few-shot config taken
    from the installed package) but reading our CSV files. Returns the local task's name."""
    lm_name = {"cmmlu": f"cmmlu_{subject}", "ceval": f"ceval-valid_{subject}", "mmlu": f"mmlu_{subject}"}[benchmark]
    template, subject_cfg = _installed_task_yaml({"cmmlu": "cmmlu", "ceval": "ceval", "mmlu": "mmlu/default"}[benchmark], lm_name)
    cfg = {**template, **{k: v for k, v in subject_cfg.items() if k not in ("include", "tag", "group")}}
    cfg.pop("group", None)
    cfg.pop("tag", None)
    name = f"local_{lm_name}"
    cfg.update(task=name, dataset_name=None)
    if benchmark == "cmmlu":
        files = {"test": str(data_dir / "test" / f"{subject}.csv"), "dev": str(data_dir / "dev" / f"{subject}.csv")}
        cfg.update(dataset_path="csv", dataset_kwargs={"data_files": files})
    elif benchmark == "ceval":
        files = {"val": str(data_dir / "val" / f"{subject}_val.csv"), "dev": str(data_dir / "dev" / f"{subject}_dev.csv")}
        cfg.update(dataset_path="csv", dataset_kwargs={"data_files": files})
    else:  # MMLU's CSVs are headerless: give lm-eval the records its template reads (question, choices, answer index)
        files = {}
        for split in ("test", "dev"):
            path = out_dir / f"{subject}_{split}.json"
            with open(data_dir / split / f"{subject}_{split}.csv", encoding="utf-8", newline="") as f:
                records = [{"question": r[0], "choices": r[1:5], "answer": "ABCD".index(r[5])} for r in csv.reader(f)]
            path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
            files[split] = str(path)
        cfg.update(dataset_path="json", dataset_kwargs={"data_files": files})
    (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return name
