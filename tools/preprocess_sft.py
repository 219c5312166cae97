#!/usr/bin/env python
"""Tokenize instruction data into an indexed SFT dataset: the same command as `megactllm preprocess-sft` (its flags: --help; its code: megactllm.data.chat.cli)."""
import sys

from megactllm.data.chat.cli import sft_main as main

if __name__ == "__main__":
    sys.exit(main())
