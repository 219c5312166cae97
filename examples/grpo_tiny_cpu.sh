#!/usr/bin/env bash
# GRPO of a tiny model on CPU: the mean reward rises from near 0 within minutes (runs/tiny_grpo/metrics.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/tiny_grpo
[ -f runs/tiny_grpo/sp.model ] || megactllm train-tokenizer train --input ../shared/data/rl/gsm8k_test.jsonl \
    --json-keys question --model-prefix runs/tiny_grpo/sp --vocab-size 1000
PYTHONPATH=examples${PYTHONPATH:+:$PYTHONPATH} megactllm train --config examples/configs/tiny_grpo.yaml "$@"
