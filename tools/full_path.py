#!/usr/bin/env python
"""The whole CT-LLM path on the bundled sample, stage by stage: the same command as `megactllm full-path` (its flags: --help; its code: megactllm.walkthrough.cli)."""
import sys

from megactllm.walkthrough.cli import main

if __name__ == "__main__":
    sys.exit(main())
