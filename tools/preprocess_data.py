#!/usr/bin/env python
"""Tokenize a corpus into Megatron indexed datasets: the same command as `megactllm tokenize` (its flags: --help; its code: megactllm.data.pretrain.cli)."""
import sys

from megactllm.data.pretrain.cli import tokenize_main as main

if __name__ == "__main__":
    sys.exit(main())
