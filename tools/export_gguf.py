#!/usr/bin/env python
"""Export a checkpoint or HF directory to one GGUF file: the same command as `megactllm export-gguf` (its flags: --help; its code: megactllm.convert.cli)."""
import sys

from megactllm.convert.cli import export_gguf_main as main

if __name__ == "__main__":
    sys.exit(main())
