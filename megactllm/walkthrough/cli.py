"""The whole CT-LLM path on the bundled sample, one stage after another (README's third command):

    clean -> tokenizer (chat tokens) -> tokenize -> pretrain (TP=2 x PP=2) -> evaluate (bits per byte,
    CMMLU) -> SFT -> DPO -> export (HF) -> GGUF q4_0 -> serve (ask one Chinese question, stop)

    megactllm full-path                    # runs/full_path/<stage>/, about 10 minutes on 2 cores
    megactllm full-path --quick            # fewer iterations (what the test runs)
    megactllm full-path --redo sft         # redo SFT and every stage after it
    megactllm full-path --verbose          # every stage's whole output, not only progress

One line per stage, then a table (stage, time, key figure, output). A stage's whole output is in
<out>/<stage>/log.txt, starting with the command it ran. Rerunning skips finished stages.
It needs a source checkout (examples/ beside the package). `python tools/full_path.py` is the same.
"""
from __future__ import annotations

import sys
from pathlib import Path

from megactllm.common.command import CommandParser, entry_point, need_path
from megactllm.errors import UserError


def source_checkout() -> Path:
    """The repository that holds this package and its examples/ (recipes, the raw sample)."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / "examples" / "configs").is_dir():
        raise UserError(f"the full path runs from a source checkout: {repo / 'examples'} is not there "
                        "(clone the repository and install it with pip install -e .)")
    return repo


@entry_point
def main(argv=None, prog=None) -> int:
    from megactllm.walkthrough import FullPath, FullPathSettings, StageFailed, format_table, run_stages
    from megactllm.walkthrough.full_path import default_out

    p = CommandParser(prog=prog, description=__doc__)
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/full_path)")
    p.add_argument("--quick", action="store_true", help="fewer training iterations: a check that every stage chains")
    p.add_argument("--redo", nargs="*", default=[], help="stages to redo even if done (later stages follow)")
    p.add_argument("--verbose", action="store_true", help="print every stage's whole output")
    p.add_argument("--raw", default=None, help="raw jsonl to clean (default examples/data/raw_sample.jsonl)")
    p.add_argument("--shared-data", default=None, help="the shared data directory (default ../shared/data)")
    args = p.parse_args(argv)
    repo = source_checkout()
    if args.raw:
        need_path(args.raw, "--raw", "file")
    if args.shared_data:
        need_path(args.shared_data, "--shared-data", "dir")
    # Paths given on the command line are relative to where the user stands, not to the repository.
    overrides = {k: str(Path(v).resolve()) for k, v in (("shared_data", args.shared_data), ("raw", args.raw)) if v}
    settings = FullPathSettings.quick(**overrides) if args.quick else FullPathSettings(**overrides)
    out = args.out or default_out(repo)
    path = FullPath(repo, out, settings, verbose=args.verbose)
    names = [s.name for s in path.stages()]
    unknown = [n for n in args.redo if n not in names]
    if unknown:
        p.error(f"unknown stage(s) {unknown}; stages are {names}")
    print(f"the full path into {out}" + (" (quick)" if args.quick else ""), flush=True)
    try:
        records = run_stages(path.stages(), out, path.settings_dict(), say=lambda s: print(s, flush=True),
                             force=args.redo)
    except StageFailed as exc:  # a stage's command failed: its cause and log are in the message
        print(f"error: {exc}", file=sys.stderr)
        print(f"finished stages are kept; rerun the same command to continue from {out}", file=sys.stderr)
        return 1
    print()
    print(format_table(records))
    return 0
