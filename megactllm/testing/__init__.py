"""Helpers for tests that run megactllm across several gloo CPU processes."""
from megactllm.testing.distributed import free_port, run_distributed

__all__ = ["free_port", "run_distributed"]
