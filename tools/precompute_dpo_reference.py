#!/usr/bin/env python
r"""Compute the DPO reference model's sequence log-probs once and store them, so that DPO training
(train.dpo_reference_logprobs=<output>) keeps no reference model in memory.

Run with the training recipe and layout, under torchrun (or SLURM) like training:

    torchrun --nproc-per-node 2 tools/precompute_dpo_reference.py --config examples/configs/tiny_dpo.yaml \
        --output data/dpo_reference.npz train.pretrained_checkpoint=checkpoints/tiny_sft
"""
import argparse
import logging
import sys

from megactllm.config import ConfigError, load_config
from megactllm.parallel import destroy_parallel, initialize_parallel
from megactllm.tokenizer import load_tokenizer
from megactllm.training.dpo_reference import precompute_reference_logps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the DPO recipe (YAML)")
    p.add_argument("--output", required=True, help="the .npz to write")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, as for training")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not cfg.data.tokenizer_model:
        print("error: data.tokenizer_model is not set", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(cfg.data.tokenizer_type, cfg.data.tokenizer_model)
    initialize_parallel(cfg.parallel, seed=cfg.train.seed, num_layers=cfg.model.num_layers)
    try:
        out = precompute_reference_logps(cfg, tokenizer, args.output)
    finally:
        destroy_parallel()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
