#!/usr/bin/env python
"""Turn en-zh sentence pairs into documents, optionally tokenized: the same command as `megactllm preprocess-parallel` (its flags: --help; its code: megactllm.data.pretrain.cli)."""
import sys

from megactllm.data.pretrain.cli import parallel_main as main

if __name__ == "__main__":
    sys.exit(main())
