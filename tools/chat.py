#!/usr/bin/env python
"""Chat with a model in the terminal: the same command as `megactllm chat` (its flags: --help; its code: megactllm.serve.cli)."""
import sys

from megactllm.serve.cli import chat_main as main

if __name__ == "__main__":
    sys.exit(main())
