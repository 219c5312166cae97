#!/usr/bin/env bash
# README's third command: the whole path on the bundled sample, each stage from the previous one's
# output, one tokenizer throughout -- clean the raw sample, train the tokenizer with the chat tokens,
# tokenize, pretrain TP=2 x PP=2 on 4 CPU processes, evaluate (bits per byte, CMMLU), SFT, DPO,
# export to Hugging Face, GGUF q4_0, serve it and ask a Chinese question with the openai client.
# About 10 minutes on 2 cores. Rerunning skips finished stages (runs/full_path/<stage>/DONE.json).
#   scripts/full_path.sh [--quick] [--redo STAGE ...] [--verbose] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./scripts/setup_env.sh
exec .venv/bin/python tools/full_path.py "$@"
