#!/usr/bin/env python
"""Tokenize preference pairs into an indexed DPO dataset: the same command as `megactllm preprocess-dpo` (its flags: --help; its code: megactllm.data.chat.cli)."""
import sys

from megactllm.data.chat.cli import dpo_main as main

if __name__ == "__main__":
    sys.exit(main())
