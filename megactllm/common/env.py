"""This process's place in a launch, read from the launcher's environment before any process group.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK, `srun` sets SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID;
torchrun's win when both are present (torchrun started inside a SLURM step). A lone process is
rank 0 of 1. `megactllm.parallel.environment` builds the full launch description (master address,
port) on top of these.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

_RANK = ("RANK", "SLURM_PROCID")
_WORLD_SIZE = ("WORLD_SIZE", "SLURM_NTASKS")
_LOCAL_RANK = ("LOCAL_RANK", "SLURM_LOCALID")


def _first_int(names: tuple, default: int, env: Optional[Mapping[str, str]]) -> int:
    env = os.environ if env is None else env
    for name in names:
        value = env.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return default


def launch_rank(env: Optional[Mapping[str, str]] = None) -> int:
    """The global rank the launcher gave this process (0 for a lone process)."""
    return _first_int(_RANK, 0, env)


def launch_world_size(env: Optional[Mapping[str, str]] = None) -> int:
    """How many processes the launcher started (1 for a lone process)."""
    return _first_int(_WORLD_SIZE, 1, env)


def launch_local_rank(env: Optional[Mapping[str, str]] = None) -> int:
    """This process's rank on its node (0 for a lone process)."""
    return _first_int(_LOCAL_RANK, 0, env)


def free_port() -> int:
    """A TCP port free on this host now: the rendezvous port of a lone process or a local test launch."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
