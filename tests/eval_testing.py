"""Helpers for the evaluation tests: a tiny LLaMA saved with the real MAP-NEO SentencePiece
tokenizer, and lm-eval task YAMLs over the local CSV files (offline)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import torch
import yaml


def save_tiny_llama(out: Path, sp_model: Path, seed: int = 0, **config) -> Path:
    """A random LlamaForCausalLM (fp32) with the real tokenizer, as an HF directory."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(sp_model, out / "tokenizer.model")
    values = dict(vocab_size=64000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    values.update(config)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**values))
    with torch.no_grad():  # larger logits than the default init, so choices differ clearly
        model.lm_head.weight.mul_(20)
    model.save_pretrained(out)
    LlamaTokenizer.from_pretrained(str(out)).save_pretrained(out)
    return out


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


def parallel_eval_jobs(checkpoint: str, tokenizer: str, save_cfg, layouts: list, requests_text: list,
                       gen_contexts: list) -> dict:
    """Run on every rank: save a random model at save_cfg's layout with the real tokenizer, then for
    each (name, ParallelConfig) layout load it through ParallelBackend.from_checkpoint and answer
    `requests_text` [(context, continuation)] and greedy generations. Returns {name: (token requests,
    answers, generations)} (the same on every rank)."""
    from megactllm.eval.backends.parallel import ParallelBackend
    from megactllm.eval.requests import encode_pair
    from megactllm.model import build_model
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megatron.core import parallel_state
    from megactllm.training.checkpoint import save_checkpoint

    initialize_parallel(save_cfg.parallel, seed=7, num_layers=save_cfg.model.num_layers)
    chunks = build_model(save_cfg.model, save_cfg.parallel, save_cfg.optim)
    save_checkpoint(checkpoint, 1, chunks, save_cfg, tokenizer_path=tokenizer)
    parallel_state.destroy_model_parallel()
    out = {}
    for name, parallel in layouts:
        initialize_parallel(parallel, seed=7, num_layers=save_cfg.model.num_layers)
        backend = ParallelBackend.from_checkpoint(checkpoint, parallel, batch_size=3)
        requests = [encode_pair(backend.encode, c, x) for c, x in requests_text]
        answers = backend.loglikelihood(requests)
        generations = backend.greedy_generate([backend.encode(c) for c in gen_contexts], max_new_tokens=4)
        out[name] = (requests, answers, generations)
        parallel_state.destroy_model_parallel()
    destroy_parallel()
    return out


def train_then_score_checkpoints(overrides: list, run_dir: str, tp: int) -> list:
    """Rank body: a tiny pretraining run whose recipe turns on in-loop evaluation, then (one spawn
    for both) every saved checkpoint of it scored at TP=tp, as tools/evaluate.py --all-checkpoints does."""
    from megatron.core import parallel_state
    from train_utils import train_in_process

    from megactllm.config import ParallelConfig, load_config
    from megactllm.eval.inloop import evaluate_checkpoints
    from megactllm.parallel import destroy_parallel, initialize_parallel

    train_in_process(overrides)
    parallel_state.destroy_model_parallel()
    cfg = load_config(None, overrides)
    parallel = ParallelConfig(tensor_model_parallel_size=tp)
    initialize_parallel(parallel, num_layers=cfg.model.num_layers)
    records = evaluate_checkpoints(run_dir, cfg.eval, parallel)
    destroy_parallel()
    return records
