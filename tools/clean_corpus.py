#!/usr/bin/env python
"""Clean a Chinese corpus the MAP-CC way: the same command as `megactllm clean` (its flags: --help; its code: megactllm.clean.cli)."""
import sys

from megactllm.clean.cli import main

if __name__ == "__main__":
    sys.exit(main())
