"""The `megactllm` command: one subcommand per stage, each the same main as its tools/*.py.

    megactllm --help                 the subcommands, one line each
    megactllm <command> --help       a command's own flags and examples
    python -m megactllm <command>    the same without the console script

`megactllm train` is `python -m megactllm.train` (under torchrun: `torchrun ... -m megactllm.train`
or `torchrun ... -m megactllm train`). Commands are imported only when run, so the list is quick.
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional

# name: (module, function, one line of help). Order: the stages in the order a user lives them.
COMMANDS = {
    "clean": ("megactllm.clean.cli", "main", "clean a raw corpus: MAP-CC filters, exact and MinHash dedup, report"),
    "train-tokenizer": ("megactllm.tokenizer.cli", "main", "train a SentencePiece BPE tokenizer, or extend one"),
    "tokenize": ("megactllm.data.pretrain.cli", "tokenize_main", "tokenize a corpus into Megatron .bin/.idx datasets"),
    "preprocess-parallel": ("megactllm.data.pretrain.cli", "parallel_main",
                            "turn en-zh sentence pairs into documents (and tokenize them)"),
    "inspect-dataset": ("megactllm.data.pretrain.cli", "inspect_main",
                        "counts, length histogram and decoded samples of a tokenized dataset"),
    "merge-datasets": ("megactllm.data.pretrain.cli", "merge_main", "merge indexed datasets into one"),
    "preprocess-sft": ("megactllm.data.chat.cli", "sft_main", "tokenize instruction data into an SFT dataset"),
    "preprocess-dpo": ("megactllm.data.chat.cli", "dpo_main", "tokenize preference pairs into a DPO dataset"),
    "train": ("megactllm.training.main", "main", "pretrain, SFT or DPO from a YAML recipe (run it under torchrun or srun)"),
    "precompute-dpo-reference": ("megactllm.training.stages.dpo.cli", "precompute_dpo_reference_main",
                                 "store the DPO reference model's log-probs once (under torchrun)"),
    "convert": ("megactllm.convert.cli", "convert_main", "megactllm checkpoint <-> Hugging Face directory"),
    "checkpoint": ("megactllm.checkpoint.cli", "main", "verify a checkpoint's files, list a run's checkpoints"),
    "evaluate": ("megactllm.eval.cli", "main", "C-Eval / CMMLU / MMLU, bits per byte, open questions"),
    "export-gguf": ("megactllm.convert.cli", "export_gguf_main", "one GGUF file for llama.cpp, optionally quantized"),
    "chat": ("megactllm.serve.cli", "chat_main", "chat with a model in the terminal"),
    "generate": ("megactllm.serve.cli", "generate_main", "complete a jsonl of prompts"),
    "serve": ("megactllm.serve.cli", "serve_main", "OpenAI-compatible server over a GGUF or HF model"),
    "full-path": ("megactllm.walkthrough.cli", "main", "the whole path on the bundled sample, stage by stage"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: megactllm <command> [args ...]", "",
             "Chinese-centric LLM training on megatron-core, from raw corpus to a served model.", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, _, text) in COMMANDS.items()]
    lines += ["", "`megactllm <command> --help` shows a command's flags and examples."]
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from megactllm.errors import EXIT_USER_ERROR, print_error

        print_error(f"megactllm: unknown command {name!r}; the commands are: {', '.join(COMMANDS)}")
        return EXIT_USER_ERROR
    module, function, _ = COMMANDS[name]
    run = getattr(importlib.import_module(module), function)
    return run(rest, prog=f"megactllm {name}")


def console_main() -> None:
    """The console script: exit with the command's code (training's failing ranks leave together)."""
    code = main()
    if sys.argv[1:2] == ["train"]:
        from megactllm.training.main import exit_for

        exit_for(code)
    sys.exit(code)
