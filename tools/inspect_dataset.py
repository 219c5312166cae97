#!/usr/bin/env python
"""Show a tokenized dataset: the same command as `megactllm inspect-dataset` (its flags: --help; its code: megactllm.data.pretrain.cli)."""
import sys

from megactllm.data.pretrain.cli import inspect_main as main

if __name__ == "__main__":
    sys.exit(main())
