#!/usr/bin/env bash
# Tokenize the bundled sample corpus with the MAP-NEO SentencePiece model extended by the two chat
# tokens (the tokenizer examples/sft_tiny_cpu.sh and dpo_tiny_cpu.sh use, so SFT can start from
# these weights), then pretrain the tiny model with TP=2 x PP=2 on 4 CPU processes (gloo) until the loss clearly
# falls, and write the loss curve. A few minutes on 2 cores.
#
#   examples/pretrain_tiny_cpu.sh                              # tokenize + train
#   examples/pretrain_tiny_cpu.sh train.duration="300 iterations"        # any section.key=value override
#   NPROC=1 examples/pretrain_tiny_cpu.sh parallel.tensor_model_parallel_size=1 \
#       parallel.pipeline_model_parallel_size=1 parallel.sequence_parallel=false
#
# Outputs in runs/tiny_pretrain/: metrics.jsonl, loss_curve.png, checkpoints/,
# tensorboard/. A relaunch resumes from the latest checkpoint; delete runs/tiny_pretrain to restart.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_TOKENIZER=../shared/data/tokenizers/map_neo_sp.model
TOKENIZER="${TOKENIZER:-runs/tiny_chat/chat_sp.model}"
OUT=runs/tiny_pretrain
if [ ! -f "$TOKENIZER" ] && [ "$TOKENIZER" = runs/tiny_chat/chat_sp.model ] && [ -f "$BASE_TOKENIZER" ]; then
  python tools/train_tokenizer.py extend --model "$BASE_TOKENIZER" --output "$TOKENIZER" \
    --user-defined "<|im_start|>" "<|im_end|>"
fi
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
  --config examples/configs/tiny_cpu.yaml data.tokenizer_model="$TOKENIZER" \
  model.vocab_size="$(python -c "from megactllm.tokenizer import load_tokenizer as l; print(l('sentencepiece', '$TOKENIZER').vocab_size)")" "$@"
