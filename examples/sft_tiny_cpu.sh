#!/usr/bin/env bash
# SFT of the tiny model on CPU at zh:en = 4:1 on ../shared/data/sft (a few minutes on 2 cores).
#
#   examples/pretrain_tiny_cpu.sh && examples/sft_tiny_cpu.sh  # SFT from the pretrained weights
#   NPROC=2 examples/sft_tiny_cpu.sh parallel.tensor_model_parallel_size=2
#   examples/sft_tiny_cpu.sh checkpoint.pretrained=null  # from random weights (the mechanics only)
#
# Starts from runs/tiny_pretrain/checkpoints when examples/pretrain_tiny_cpu.sh has saved one (same
# tokenizer: MAP-NEO + the two chat tokens, 64,002 pieces). scripts/full_path.sh runs the whole chain.
set -euo pipefail
cd "$(dirname "$0")/.."
source examples/tiny_chat_data.sh
FROM=()
if [ -f runs/tiny_pretrain/checkpoints/latest_checkpointed_iteration.txt ]; then
  FROM=(checkpoint.pretrained=runs/tiny_pretrain/checkpoints)
else
  echo "note: runs/tiny_pretrain/checkpoints is absent (run examples/pretrain_tiny_cpu.sh first); SFT starts from random weights" >&2
fi
torchrun --standalone --nproc-per-node "${NPROC:-1}" -m megactllm.train \
  --config examples/configs/tiny_sft.yaml "${FROM[@]}" "$@"
