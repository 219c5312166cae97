#!/usr/bin/env python
"""Clean a Chinese corpus the MAP-CC way (filters, exact + MinHash-LSH dedup, report).

Locally, all stages with 8 processes:
    python tools/clean_corpus.py examples/clean/mapcc.yaml "input.paths=[data/*.jsonl]" run.output_dir=out --workers 8
One stage as a SLURM array task (task index and count from the SLURM environment; see
examples/clean/submit_slurm.sh, which chains all stages):
    python tools/clean_corpus.py examples/clean/mapcc.yaml --stage filter
Rerunning any command resumes: finished units (marked .done) are skipped. The cleaned
corpus is <output_dir>/dedup/NNNNN.jsonl; the report is <output_dir>/report.md.
"""
import argparse
import sys

from megactllm.clean import STAGES, CleanConfig, run_all, slurm_task
from megactllm.clean.runner import StageNotReady


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="YAML recipe (see examples/clean/mapcc.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. dedup.ngram=5")
    p.add_argument("--stage", action="append", choices=STAGES,
                   help=f"stage(s) to run, in order; default all: {' '.join(STAGES)}")
    p.add_argument("--workers", type=int, help="local processes per stage (default run.workers)")
    p.add_argument("--task-index", type=int, help="this task's index (default: SLURM_ARRAY_TASK_ID)")
    p.add_argument("--num-tasks", type=int, help="number of tasks (default: SLURM_ARRAY_TASK_COUNT)")
    args = p.parse_args(argv)
    try:
        cfg = CleanConfig.from_yaml(args.recipe, args.overrides)
    except (OSError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    task = slurm_task()
    if args.task_index is not None or args.num_tasks is not None:
        if args.task_index is None or args.num_tasks is None:
            p.error("--task-index and --num-tasks go together")
        task = (args.task_index, args.num_tasks)
    try:
        run_all(cfg, tuple(args.stage or STAGES), task, args.workers)
    except (StageNotReady, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
