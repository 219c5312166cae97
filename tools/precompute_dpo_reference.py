#!/usr/bin/env python
"""Store the DPO reference model's log-probs once (run under torchrun): the same command as `megactllm precompute-dpo-reference` (its flags: --help; its code: megactllm.training.stages.dpo.cli)."""
import sys

from megactllm.training.stages.dpo.cli import precompute_dpo_reference_main as main

if __name__ == "__main__":
    sys.exit(main())
