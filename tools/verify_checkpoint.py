#!/usr/bin/env python
"""Verify a checkpoint's files, list a run's checkpoints: the same command as `megactllm checkpoint` (its flags: --help; its code: megactllm.checkpoint.cli)."""
import sys

from megactllm.checkpoint.cli import main

if __name__ == "__main__":
    sys.exit(main())
