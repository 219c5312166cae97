"""Evaluate a model: C-Eval / CMMLU / MMLU multiple choice (lm-eval 0.4's prompts and scores),
a generic jsonl multiple-choice set, and bits per byte of a corpus.

    megactllm evaluate --model hf/ctllm-2b --tasks cmmlu,ceval --data-dir ../shared/data/eval \\
        --shots 5 --output runs/eval/results.json
    megactllm evaluate --model runs/ctllm/iter_0010000 --tasks cmmlu,bpb --data-dir ../shared/data/eval \\
        --subjects agronomy,astronomy --corpus ../shared/data/corpus/clue_small_zh.txt --output results.json
    torchrun --nproc-per-node 8 -m megactllm evaluate --model runs/ctllm --tp 2 --pp 2 --tasks cmmlu ...
    megactllm evaluate --model runs/ctllm --all-checkpoints --tasks cmmlu --data-dir ../shared/data/eval \\
        --subjects agronomy --limit 50       # the accuracy curve over saved checkpoints

--model is a Hugging Face directory (transformers) or a megactllm checkpoint (loaded at --tp x --pp,
the rest of the launch is data parallel; questions are sharded over the data-parallel ranks).
(`python tools/evaluate.py ...` is the same command.)
"""
from __future__ import annotations

import argparse

from megactllm.common.command import CommandParser, entry_point, need_path


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _positive(text: str) -> int:
    """A count or length flag: a whole number above zero (argparse names the flag)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


@entry_point
def main(argv=None, prog=None) -> int:
    from megactllm.eval.evaluate import TASKS, EvalOptions, evaluate, evaluate_all_checkpoints
    from megactllm.eval.scoring import MODES

    p = CommandParser(prog=prog, description=__doc__)
    p.add_argument("--model", required=True, help="HF directory or megactllm checkpoint (iteration or run directory)")
    p.add_argument("--tasks", required=True, type=_list, help=f"comma-separated: {', '.join(TASKS)}")
    p.add_argument("--data-dir", help="root holding cmmlu/ ceval/ mmlu/ (e.g. ../shared/data/eval), or one benchmark's directory")
    p.add_argument("--subjects", type=_list, default=[], help="comma-separated subjects, or task:subject for one task (default: every file present)")
    p.add_argument("--shots", type=int, default=0, help="k-shot from the dev split, 0-5")
    p.add_argument("--mode", choices=MODES, default="loglikelihood",
                   help="loglikelihood (lm-eval's acc/acc_norm), letter (next-token letter), generate (greedy answer)")
    p.add_argument("--limit", type=_positive, help="at most this many questions per subject")
    p.add_argument("--output", help="results.json path (results.md is written beside it)")
    p.add_argument("--log-samples", action="store_true", help="per-question records in results.json")
    p.add_argument("--corpus", nargs="+", default=[], help="bpb: jsonl/txt/parquet files, globs or directories")
    p.add_argument("--text-key", default="text", help="bpb: jsonl/parquet field holding the text")
    p.add_argument("--max-documents", type=_positive, help="bpb: read at most this many documents")
    p.add_argument("--stride", type=_positive, help="bpb: tokens a window advances (default: the whole window)")
    p.add_argument("--questions-file", help="gen: jsonl of open questions {question, id?, category?, reference?}")
    p.add_argument("--judge-url", help="gen: OpenAI-compatible base URL of a judge model (e.g. http://host:8000/v1); "
                   "key from $MEGACTLLM_JUDGE_API_KEY; without it answers are written and not rated")
    p.add_argument("--judge-model", help="gen: the judge's model name")
    p.add_argument("--math-file", help="math: jsonl of {question, answer} (e.g. ../shared/data/rl/gsm8k_test.jsonl); --limit caps it")
    p.add_argument("--max-new-tokens", type=_positive, default=256, help="gen, math: answer length cap")
    p.add_argument("--max-length", type=_positive, help="model window in tokens (default: the model's)")
    p.add_argument("--batch-size", type=_positive, default=8)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="HF backend weights dtype")
    p.add_argument("--all-checkpoints", action="store_true",
                   help="--model is a run directory: score every iter_* (records as in-loop eval; default output RUN/checkpoint_evals.jsonl)")
    p.add_argument("--tp", type=_positive, default=1, help="checkpoint: tensor-parallel size of this launch")
    p.add_argument("--pp", type=_positive, default=1, help="checkpoint: pipeline-parallel size of this launch")
    p.add_argument("--verbose", action="store_true", help="show third-party warnings and progress bars")
    a = p.parse_args(argv)
    from megactllm.output import configure_output

    configure_output(verbose=a.verbose)  # before transformers and megatron-core are imported
    need_path(a.model, "--model", "dir")
    for flag, path in (("--data-dir", a.data_dir), ("--questions-file", a.questions_file), ("--math-file", a.math_file)):
        if path:
            need_path(path, flag)
    opts = EvalOptions(
        model=a.model, tasks=a.tasks, data_dir=a.data_dir, subjects=a.subjects, shots=a.shots, mode=a.mode,
        limit=a.limit, output=a.output, log_samples=a.log_samples, corpus=a.corpus, stride=a.stride,
        max_length=a.max_length, max_documents=a.max_documents, text_key=a.text_key, batch_size=a.batch_size,
        dtype=a.dtype, tensor_parallel=a.tp, pipeline_parallel=a.pp, questions_file=a.questions_file,
        judge_url=a.judge_url, judge_model=a.judge_model, max_new_tokens=a.max_new_tokens,
        math_file=a.math_file,
    )
    # Their user errors are EvalDataError, EvalSetupError, JudgeError, checkpoint, tokenizer and
    # corpus errors (all UserErrors); anything else is a bug and keeps its traceback.
    evaluate_all_checkpoints(opts) if a.all_checkpoints else evaluate(opts)
    return 0
