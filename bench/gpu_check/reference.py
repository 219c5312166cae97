"""The fp32 CPU reference of the bf16 stage, run in a process that sees no GPU.

    CUDA_VISIBLE_DEVICES= python -m bench.gpu_check.reference '[start_overrides, run_overrides]'
"""
import json
import os
import sys


def main() -> None:
    from megactllm.config import load_config
    from megactllm.parallel import initialize_parallel
    from megactllm.testing.distributed import free_port

    from bench.gpu_check.stages_train import fp32_reference

    start, run = json.loads(sys.argv[1])
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    cfg = load_config(None, run)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    print(json.dumps(fp32_reference(start, run)))


if __name__ == "__main__":
    main()
