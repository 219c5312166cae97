"""Where this process sits: rank, world size and local rank from torchrun or SLURM, and its device."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LaunchEnvironment:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "slurm" or "single"


def _first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM nodelist such as `gpu[01-04,07]` (scontrol when present, else parsed)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=30
        )
        return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        first = rest.rstrip("]").split(",")[0].split("-")[0]
        return prefix + first
    return head


def detect_launch_environment() -> LaunchEnvironment:
    """torchrun's variables win; `srun python -m ...` (one task per GPU) is read from SLURM_*."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnvironment(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        return LaunchEnvironment(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=env.get("MASTER_ADDR") or _first_slurm_host(nodelist),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="slurm",
        )
    return LaunchEnvironment(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT", 29500)), "single")


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
