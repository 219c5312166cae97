#!/usr/bin/env python
"""Evaluate a model (C-Eval, CMMLU, MMLU, bits per byte, open questions): the same command as `megactllm evaluate` (its flags: --help; its code: megactllm.eval.cli)."""
import sys

from megactllm.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
