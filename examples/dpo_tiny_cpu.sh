#!/usr/bin/env bash
# DPO of the tiny SFT model on CPU on ../shared/data/dpo (run examples/sft_tiny_cpu.sh first).
# Logs dpo loss, reward accuracy, chosen/rejected rewards and the reward margin every 5 steps.
#
#   examples/dpo_tiny_cpu.sh                     # live reference model (same layout, frozen)
#   PRECOMPUTE=1 examples/dpo_tiny_cpu.sh        # reference log-probs computed once, then no reference model
set -euo pipefail
cd "$(dirname "$0")/.."
source examples/tiny_chat_data.sh
CONFIG=examples/configs/tiny_dpo.yaml
EXTRA=()
if [ "${PRECOMPUTE:-0}" = 1 ]; then
  torchrun --standalone --nproc-per-node "${NPROC:-1}" tools/precompute_dpo_reference.py \
    --config "$CONFIG" --output "$WORK/dpo_reference.npz" "$@"
  EXTRA=(dpo.reference_logprobs="$WORK/dpo_reference.npz")
fi
torchrun --standalone --nproc-per-node "${NPROC:-1}" -m megactllm.train --config "$CONFIG" "${EXTRA[@]}" "$@"
