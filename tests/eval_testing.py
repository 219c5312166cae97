"""Helpers for the evaluation tests: a tiny LLaMA saved with the real MAP-NEO SentencePiece
tokenizer, and lm-eval task YAMLs over the local CSV files (offline)."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch


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


def benchmark_files_without_mapping(shared_eval: Path, out: Path, extra_test: dict | None = None) -> Path:
    """out/<benchmark>/<split>/ holding links to the real CSV files and no mapping.json, as the
    benchmarks' own repositories ship them. extra_test {benchmark: [subject]} adds subjects absent
    from the evaluation split by linking their dev file there (CMMLU's test split holds 34 of 67)."""
    eval_split = {"cmmlu": ("test", ""), "ceval": ("val", "_val"), "mmlu": ("test", "_test")}
    for benchmark in ("cmmlu", "ceval", "mmlu"):
        for split_dir in sorted(p for p in (shared_eval / benchmark).iterdir() if p.is_dir()):
            target = out / benchmark / split_dir.name
            target.mkdir(parents=True)
            for csv_file in split_dir.glob("*.csv"):
                (target / csv_file.name).symlink_to(csv_file)
        split, suffix = eval_split[benchmark]
        dev_suffix = "" if benchmark == "cmmlu" else "_dev"
        for subject in (extra_test or {}).get(benchmark, []):
            (out / benchmark / split / f"{subject}{suffix}.csv").symlink_to(shared_eval / benchmark / "dev" / f"{subject}{dev_suffix}.csv")
        assert not (out / benchmark / "mapping.json").exists()
    return out


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
    from megactllm.checkpoint import Checkpointer

    initialize_parallel(save_cfg.parallel, seed=7, num_layers=save_cfg.model.num_layers)
    chunks = build_model(save_cfg.model, save_cfg.parallel, save_cfg.optim)
    Checkpointer(checkpoint).save(1, chunks, save_cfg, tokenizer_path=tokenizer)
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


def add_chat_template(model_dir: Path) -> Path:
    """Give a saved tiny LLaMA megactllm's chat format: <|im_start|>/<|im_end|> as special tokens
    (embeddings grown to match) and the chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megactllm.tokenizer.chat_template import CHAT_TEMPLATE, CHAT_SPECIAL_TOKENS

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.add_special_tokens({"additional_special_tokens": list(CHAT_SPECIAL_TOKENS)})
    tok.chat_template = CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir
