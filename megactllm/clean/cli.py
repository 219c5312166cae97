"""Clean a Chinese corpus the MAP-CC way (filters, exact + MinHash-LSH dedup, report).

Locally, all stages with 8 processes:
    megactllm clean examples/clean/mapcc.yaml "input.paths=[data/*.jsonl]" run.output_dir=out --workers 8
One stage as a SLURM array task (task index and count from the SLURM environment; see
examples/clean/submit_slurm.sh, which chains all stages):
    megactllm clean examples/clean/mapcc.yaml --stage filter
Rerunning any command resumes: finished units (marked .done) are skipped. The cleaned
corpus is <output_dir>/dedup/NNNNN.jsonl; the report is <output_dir>/report.md.
(`python tools/clean_corpus.py ...` is the same command.)
"""
from __future__ import annotations

from megactllm.common.command import CommandParser, entry_point, need_path


@entry_point
def main(argv=None, prog=None) -> int:
    from megactllm.clean import STAGES, CleanConfig, run_all, slurm_task

    p = CommandParser(prog=prog, description=__doc__)
    p.add_argument("recipe", help="YAML recipe (see examples/clean/mapcc.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. dedup.ngram=5")
    p.add_argument("--stage", action="append", choices=STAGES,
                   help=f"stage(s) to run, in order; default all: {' '.join(STAGES)}")
    p.add_argument("--workers", type=int, help="local processes per stage (default run.workers)")
    p.add_argument("--task-index", type=int, help="this task's index (default: SLURM_ARRAY_TASK_ID)")
    p.add_argument("--num-tasks", type=int, help="number of tasks (default: SLURM_ARRAY_TASK_COUNT)")
    args = p.parse_args(argv)
    need_path(args.recipe, "recipe", "file")
    cfg = CleanConfig.from_yaml(args.recipe, args.overrides)  # a bad recipe is a CleanConfigError (a UserError)
    task = slurm_task()
    if args.task_index is not None or args.num_tasks is not None:
        if args.task_index is None or args.num_tasks is None:
            p.error("--task-index and --num-tasks go together")
        task = (args.task_index, args.num_tasks)
    run_all(cfg, tuple(args.stage or STAGES), task, args.workers)  # its user errors are UserErrors; bugs keep tracebacks
    return 0
