"""Process groups, device choice, torchrun/SLURM environment and the CPU (gloo) backend."""
from megactllm.parallel.cpu_compat import cpu_compat_enabled, enable_cpu_compat
from megactllm.parallel.environment import LaunchEnvironment, default_device, detect_launch_environment
from megactllm.parallel.initialize import (
    ParallelLayoutError,
    check_layout,
    destroy_parallel,
    initialize_parallel,
    set_random_seed,
)

__all__ = [
    "LaunchEnvironment",
    "ParallelLayoutError",
    "check_layout",
    "cpu_compat_enabled",
    "default_device",
    "destroy_parallel",
    "detect_launch_environment",
    "enable_cpu_compat",
    "initialize_parallel",
    "set_random_seed",
]
