#!/usr/bin/env python
"""OpenAI-compatible server over a GGUF or HF model: the same command as `megactllm serve` (its flags: --help; its code: megactllm.serve.cli)."""
import sys

from megactllm.serve.cli import serve_main as main

if __name__ == "__main__":
    sys.exit(main())
