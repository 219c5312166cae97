"""Train a model: `torchrun --nproc-per-node N -m megactllm.train --config RECIPE.yaml [section.key=value ...]`.

Also runs under `srun` (one task per GPU; rank and world size from SLURM) and as a single process.
`train.stage` picks pretrain, sft or dpo; everything else comes from the recipe and the overrides.
"""
from __future__ import annotations

import argparse
import os
import sys

from megactllm.config import ConfigError, load_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m megactllm.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML recipe (examples/configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.train_iters=100")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from megactllm.training import exit_signals
    from megactllm.training.parent_death import die_with_parent, launched_by_torchrun

    # First, before heavy imports: a scheduler's SIGTERM/SIGUSR1 sets a flag; a torchrun worker dies with torchrun.
    exit_signals.install()
    if launched_by_torchrun():
        die_with_parent()
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.training.loop import run_training
    from megactllm.training.nonfinite import NonFiniteLossError

    if "WORLD_SIZE" not in os.environ and "SLURM_PROCID" not in os.environ:
        from megactllm.testing.distributed import free_port

        # A lone process (no torchrun/srun): any free rendezvous port, so two runs can coexist.
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    initialize_parallel(cfg.parallel, seed=cfg.train.seed, num_layers=cfg.model.num_layers)
    from megactllm.data.gpt_dataset import BlendError
    from megactllm.data.indexed import DatasetFormatError
    from megactllm.training.checkpoint import CheckpointError
    from megactllm.training.run_lock import RunLockError
    from megactllm.training.schedule import ScheduleError
    from megactllm.training.stages import UnknownStageError

    try:
        result = run_training(cfg)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (BlendError, DatasetFormatError, CheckpointError, ScheduleError, UnknownStageError, RunLockError) as e:
        # A user's mistake with a message that names what to fix: no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        destroy_parallel()
    code = 0 if result.state.iteration >= result.train_iters or cfg.train.exit_interval else 1
    if result.stop_reason and cfg.train.save:
        code = exit_signals.EXIT_CODE_RESUME  # saved and stopped early: the launch script requeues
    exit_signals.write_exit_status(code, result.stop_reason, result.state.iteration)
    return code


if __name__ == "__main__":
    sys.exit(main())
