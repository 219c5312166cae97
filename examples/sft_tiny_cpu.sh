#!/usr/bin/env bash
# SFT of the tiny model on CPU at zh:en = 4:1 on ../shared/data/sft (a few minutes on 2 cores).
#
#   examples/sft_tiny_cpu.sh                                   # one process
#   NPROC=2 examples/sft_tiny_cpu.sh parallel.tensor_model_parallel_size=2
#   examples/sft_tiny_cpu.sh train.pretrained_checkpoint=runs/tiny_pretrain/checkpoints
#
# Without train.pretrained_checkpoint the tiny model starts from random weights (a demo of the
# mechanics); with one, its vocabulary must include the two chat tokens (model.vocab_size 64002).
set -euo pipefail
cd "$(dirname "$0")/.."
source examples/tiny_chat_data.sh
torchrun --standalone --nproc-per-node "${NPROC:-1}" -m megactllm.train \
  --config examples/configs/tiny_sft.yaml "$@"
