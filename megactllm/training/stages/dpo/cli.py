r"""Compute the DPO reference model's sequence log-probs once and store them, so that DPO training
(dpo.reference_logprobs=<output>) keeps no reference model in memory.

Run with the training recipe and layout, under torchrun (or SLURM) like training:

    torchrun --nproc-per-node 2 -m megactllm precompute-dpo-reference --config examples/configs/tiny_dpo.yaml \
        --output data/dpo_reference.npz checkpoint.pretrained=checkpoints/tiny_sft
(`tools/precompute_dpo_reference.py` is the same command.)
"""
from __future__ import annotations

from megactllm.common.command import CommandParser, entry_point, need_path
from megactllm.config import ConfigError


@entry_point
def precompute_dpo_reference_main(argv=None, prog=None) -> int:
    import logging

    from megactllm.config import load_config
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.tokenizer import load_tokenizer
    from megactllm.training.stages.dpo.reference import precompute_reference_logps

    p = CommandParser(prog=prog, description=__doc__)
    p.add_argument("--config", required=True, help="the DPO recipe (YAML)")
    p.add_argument("--output", required=True, help="the .npz to write")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, as for training")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = load_config(need_path(args.config, "--config", "file"), args.overrides)
    if not cfg.data.tokenizer_model:
        raise ConfigError("data.tokenizer_model is not set")
    tokenizer = load_tokenizer(cfg.data.tokenizer_type, need_path(cfg.data.tokenizer_model, "data.tokenizer_model"))
    initialize_parallel(cfg.parallel, seed=cfg.train.seed, num_layers=cfg.model.num_layers)
    try:
        out = precompute_reference_logps(cfg, tokenizer, args.output)
    finally:
        destroy_parallel()
    print(f"wrote {out}")
    return 0
