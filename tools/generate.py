#!/usr/bin/env python
"""Complete a jsonl of prompts into a jsonl: the same command as `megactllm generate` (its flags: --help; its code: megactllm.serve.cli)."""
import sys

from megactllm.serve.cli import generate_main as main

if __name__ == "__main__":
    sys.exit(main())
