#!/usr/bin/env bash
# A blend schedule on real data: tokenize the shared News Commentary en-zh pairs (rendered as
# documents in both directions, 4 pairs each), CLUECorpusSmall (zh) and C4 (en), then train the
# tiny model through warm_start (parallel text) -> stable -> decay on one CPU process.
#
#   examples/blend_schedule_tiny_cpu.sh                       # tokenize + train
#   examples/blend_schedule_tiny_cpu.sh train.duration="60 iterations"  # any section.key=value override
#
# Outputs in runs/tiny_blend/: metrics.jsonl (blend_phase, blend_weights per logged step),
# loss_curve.png with the phase boundaries, checkpoints/. Delete runs/tiny_blend to restart.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${SHARED:-../shared/data}"
TOKENIZER="${TOKENIZER:-$SHARED/tokenizers/map_neo_sp.model}"
OUT=runs/tiny_blend/data
tok=(--tokenizer-type sentencepiece --tokenizer-model "$TOKENIZER" --append-eod)
if [ ! -f "$OUT/parallel_text_document.idx" ]; then
  python tools/preprocess_parallel.py --input "$SHARED/corpus/news_commentary_en_zh.tsv" \
    --output "$OUT/parallel.jsonl" --pairs-per-document 4 "${tok[@]}" --output-prefix "$OUT/parallel"
fi
if [ ! -f "$OUT/zh_text_document.idx" ]; then
  python tools/preprocess_data.py --input "$SHARED/corpus/clue_small_zh.txt" "${tok[@]}" --output-prefix "$OUT/zh"
fi
if [ ! -f "$OUT/en_text_document.idx" ]; then
  python tools/preprocess_data.py --input "$SHARED/corpus/c4_demo_en.jsonl" "${tok[@]}" --output-prefix "$OUT/en"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
torchrun --standalone --nproc-per-node "${NPROC:-1}" -m megactllm.train \
  --config examples/configs/tiny_blend_schedule.yaml data.tokenizer_model="$TOKENIZER" "$@"
