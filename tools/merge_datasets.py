#!/usr/bin/env python
"""Merge Megatron indexed datasets into one: the same command as `megactllm merge-datasets` (its flags: --help; its code: megactllm.data.pretrain.cli)."""
import sys

from megactllm.data.pretrain.cli import merge_main as main

if __name__ == "__main__":
    sys.exit(main())
