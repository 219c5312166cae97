"""Train a model: `torchrun --nproc-per-node N -m megactllm.train --config RECIPE.yaml [section.key=value ...]`
(or `megactllm train ...` for one process; `torchrun ... -m megactllm train ...` is the same).

Also runs under `srun` (one task per GPU; rank and world size from SLURM) and as a single process.
`train.stage` picks pretrain, sft or dpo; everything else comes from the recipe and the overrides.
Starting from a checkpoint (checkpoint.load, checkpoint.pretrained), the model section comes from
the checkpoint. Before anything is built the run is checked (see megactllm.training.run.preflight);
`--dry-run` prints the memory estimate, the layout and the schedule and exits. A user's mistake
prints one `error: ...` line from rank 0 and every rank exits with code 2 (3: non-finite loss).
"""
from __future__ import annotations

import os
import sys


def parse_args(argv=None, prog=None):
    from megactllm.common.command import CommandParser

    parser = CommandParser(prog=prog or "python -m megactllm.train", description=__doc__)
    parser.add_argument("--config", help="YAML recipe (examples/configs/*.yaml)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the run, print the memory estimate, the layout and the schedule, and exit")
    parser.add_argument("--help-config", action="store_true",
                        help="list every recipe key with its type, default and meaning (docs/recipe.md), and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="show every rank's output and every third-party warning (also MEGACTLLM_VERBOSE=1)")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.duration='100 iterations'")
    return parser.parse_args(argv)


def _start_process_group(cfg) -> None:
    """The default process group only (megatron's groups come after the checks agree)."""
    import datetime

    import torch
    import torch.distributed as dist

    from megactllm.parallel import detect_launch_environment, enable_cpu_compat

    env = detect_launch_environment()
    if env.world_size == 1 or dist.is_initialized():
        return
    if not torch.cuda.is_available():
        enable_cpu_compat()
    os.environ.setdefault("MASTER_ADDR", env.master_addr)
    os.environ.setdefault("MASTER_PORT", str(env.master_port))
    backend = (cfg.parallel.distributed_backend if cfg else None) or ("nccl" if torch.cuda.is_available() else "gloo")
    minutes = cfg.parallel.distributed_timeout_minutes if cfg else 10
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(minutes=minutes))


def main(argv=None, prog=None) -> int:
    from megactllm.training.run import signals as exit_signals
    from megactllm.training.run.parent_death import die_with_parent, launched_by_torchrun

    # First, before heavy imports: a scheduler's SIGTERM/SIGUSR1 sets a flag; a torchrun worker dies with torchrun.
    exit_signals.install()
    if launched_by_torchrun():
        die_with_parent()
    from megactllm.common.env import launch_rank
    from megactllm.errors import EXIT_USER_ERROR, UserError, print_error

    try:
        args = parse_args(argv, prog)
    except UserError as e:  # a command line that does not parse: one line, from rank 0 only
        if launch_rank() == 0:
            print_error(str(e))
        return EXIT_USER_ERROR
    if args.help_config:
        from megactllm.config.reference import recipe_reference

        if launch_rank() == 0:
            sys.stdout.write(recipe_reference())
        return 0
    from megactllm.output import configure_output

    configure_output(verbose=args.verbose)  # before megatron-core is imported: its warnings come at import
    own_port = "WORLD_SIZE" not in os.environ and "SLURM_PROCID" not in os.environ and "MASTER_PORT" not in os.environ
    if own_port:
        from megactllm.common.env import free_port

        # A lone process (no torchrun/srun): any free rendezvous port, so two runs can coexist.
        os.environ["MASTER_PORT"] = str(free_port())
    try:
        return _run(args, exit_signals)
    finally:
        if own_port:
            # Left set, a caller that ran training in-process would hand every process it starts
            # later a port this process's store may still hold: EADDRINUSE.
            os.environ.pop("MASTER_PORT", None)


def _run(args, exit_signals) -> int:
    from megactllm.config import load_config
    from megactllm.errors import (
        EXIT_NONFINITE,
        agree_on_error,
        report_error_in_run,
        user_error_types,
    )
    from megactllm.parallel import detect_launch_environment

    env = detect_launch_environment()
    import torch

    if torch.cuda.is_available():  # this rank's GPU, before the memory check reads its free memory
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())

    # Every check before anything is built; every rank runs them, then all agree on one verdict.
    cfg, plan, error = None, None, None
    try:
        from megactllm.training.run.preflight import preflight

        cfg = load_config(args.config, args.overrides)
        plan = preflight(cfg, env.world_size, check_memory=cfg.run.check_memory, raise_if_unfit=not args.dry_run)
    except user_error_types() as e:
        error = e
    _start_process_group(cfg)
    code = agree_on_error(error)
    if not code and env.rank == 0:
        for note in plan.notes:
            print(note, flush=True)
    if code or args.dry_run:
        if not code and env.rank == 0:
            print(plan.report(), flush=True)
        _destroy_process_group()
        return code

    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.training.trainer import run_training
    from megactllm.training.callbacks.nonfinite import NonFiniteLossError

    initialize_parallel(cfg.parallel, seed=cfg.train.seed, num_layers=cfg.model.num_layers)
    try:
        result = run_training(cfg)
    except NonFiniteLossError as e:
        return report_error_in_run(e, EXIT_NONFINITE)
    except user_error_types() as e:
        # A user's mistake found while running (data, checkpoint): one line, no traceback.
        return report_error_in_run(e)
    finally:
        destroy_parallel()
    code = 0 if result.state.iteration >= result.train_iters or cfg.run.exit_interval else 1
    if result.stop_reason and cfg.checkpoint.save:
        code = exit_signals.EXIT_CODE_RESUME  # saved and stopped early: the launch script requeues
    exit_signals.write_exit_status(code, result.stop_reason, result.state.iteration)
    return code


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def exit_for(exit_code: int) -> None:
    """Leave the process with a run's exit code."""
    from megactllm.errors import EXIT_NONFINITE, EXIT_USER_ERROR, exit_now

    if exit_code in (EXIT_USER_ERROR, EXIT_NONFINITE):
        exit_now(exit_code)  # every failing rank leaves together (see megactllm.errors)
    sys.exit(exit_code)


if __name__ == "__main__":
    exit_for(main())
