#!/usr/bin/env bash
# README's first command: tokenize the bundled sample corpus with the MAP-NEO SentencePiece model,
# then pretrain the tiny model with TP=2 x PP=2 on 4 CPU processes (gloo) until the loss clearly
# falls, and write the loss curve. A few minutes on 2 cores.
#
#   examples/pretrain_tiny_cpu.sh                              # tokenize + train
#   examples/pretrain_tiny_cpu.sh train.train_iters=300        # any section.key=value override
#   NPROC=1 examples/pretrain_tiny_cpu.sh parallel.tensor_model_parallel_size=1 \
#       parallel.pipeline_model_parallel_size=1 parallel.sequence_parallel=false
#
# Outputs in runs/tiny_pretrain/: metrics.jsonl, loss_curve.png, checkpoints/,
# tensorboard/. A relaunch resumes from the latest checkpoint; delete runs/tiny_pretrain to restart.
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENIZER="${TOKENIZER:-../shared/data/tokenizers/map_neo_sp.model}"
OUT=runs/tiny_pretrain
if [ ! -f "$TOKENIZER" ]; then
  echo "tokenizer $TOKENIZER not found: set TOKENIZER=/path/to/sentencepiece.model" >&2
  exit 2
fi
if [ ! -f "$OUT/data/sample_text_document.idx" ]; then
  python tools/preprocess_data.py --input examples/data/sample_corpus.jsonl \
    --tokenizer-type sentencepiece --tokenizer-model "$TOKENIZER" --append-eod \
    --output-prefix "$OUT/data/sample"
fi
# Four ranks share two cores: one intra-op thread each.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
torchrun --standalone --nproc-per-node "${NPROC:-4}" -m megactllm.train \
  --config examples/configs/tiny_cpu.yaml data.tokenizer_model="$TOKENIZER" "$@"
