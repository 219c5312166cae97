"""`megactllm checkpoint`: check a checkpoint's files by hand, list a run directory's checkpoints."""
from __future__ import annotations

from megactllm.common.command import CommandParser, entry_point

HELP = """Check and list megactllm checkpoints.

Verify every file of a checkpoint against the sizes and CRC-32s recorded when it was saved
(a run directory means its latest checkpoint; format-1 checkpoints, which have no manifest, are
checked against their dist_checkpointing storage indexes):
    megactllm checkpoint verify runs/ctllm-2b
    megactllm checkpoint verify runs/ctllm-2b/iter_0002000 --sizes-only

List a run directory's checkpoints, newest first, each verified (sizes only unless --checksums):
    megactllm checkpoint list runs/ctllm-2b
"""


def _parser(prog) -> CommandParser:
    p = CommandParser(prog=prog, description=HELP)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check a checkpoint's files against its manifest (exit 2 when damaged)")
    v.add_argument("checkpoint", help="run directory (its latest checkpoint) or an iter_XXXXXXX directory")
    v.add_argument("--sizes-only", action="store_true", help="compare sizes only, not checksums (no file is read)")
    ls = sub.add_parser("list", help="the checkpoints of a run directory, newest first")
    ls.add_argument("run_dir")
    ls.add_argument("--checksums", action="store_true", help="also compare checksums (reads every file)")
    return p


@entry_point
def main(argv=None, prog=None) -> int:
    args = _parser(prog).parse_args(argv)
    from megactllm.checkpoint import CheckpointError, Checkpointer, DamagedCheckpointError, resolve_checkpoint_dir
    from megactllm.checkpoint.disk_space import gib
    from megactllm.checkpoint.layout import read_latest_pointer

    if args.command == "verify":
        path = resolve_checkpoint_dir(args.checkpoint)
        report = Checkpointer.verify(path, checksums=not args.sizes_only)
        if not report.ok:
            raise DamagedCheckpointError(f"checkpoint {report.summary()}")
        if report.manifest:
            what = "sizes and crc32" if report.checksums else "sizes"
            print(f"ok: {path} ({report.files} files, {gib(report.bytes)}; {what} checked)")
        else:
            print(f"ok: {path} (format 1, no manifest: files checked against the storage indexes)")
        return 0
    ckpt = Checkpointer(args.run_dir)
    iterations = ckpt.list()
    if not iterations:
        raise CheckpointError(f"{args.run_dir} holds no published checkpoint")
    latest = read_latest_pointer(args.run_dir)
    for it in reversed(iterations):
        path = ckpt.save_dir / f"iter_{it:07d}"
        report = Checkpointer.verify(path, checksums=args.checksums)
        state = "ok" if report.ok else "DAMAGED: " + "; ".join(report.problems[:2])
        size = gib(report.bytes) if report.manifest else "format 1"
        print(f"{path.name}  {size:>12}  {state}{'  (latest)' if it == latest else ''}")
    return 0
