#!/usr/bin/env python
"""Train a SentencePiece tokenizer, or extend one: the same command as `megactllm train-tokenizer` (its flags: --help; its code: megactllm.tokenizer.cli)."""
import sys

from megactllm.tokenizer.cli import main

if __name__ == "__main__":
    sys.exit(main())
