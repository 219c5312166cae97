#!/usr/bin/env python
"""Convert between megactllm checkpoints and Hugging Face directories: the same command as `megactllm convert` (its flags: --help; its code: megactllm.convert.cli)."""
import sys

from megactllm.convert.cli import convert_main as main

if __name__ == "__main__":
    sys.exit(main())
