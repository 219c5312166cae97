#!/usr/bin/env bash
# Shared first steps of the tiny SFT/DPO examples (sourced): a tokenizer with the chat tokens and
# the preprocessed SFT and DPO datasets under runs/tiny_chat/. Steps already done are skipped.
set -euo pipefail
SHARED=${SHARED:-../shared/data}
WORK=runs/tiny_chat
SEQ=${SEQ:-256}          # SFT rows (examples/configs/tiny_sft.yaml model.seq_length)
DPO_SEQ=${DPO_SEQ:-128}  # DPO rows, two per pair (examples/configs/tiny_dpo.yaml model.seq_length)
mkdir -p "$WORK"
if [ ! -d "$SHARED" ]; then
  echo "error: $SHARED (the shared real data) is absent; set SHARED=/path/to/shared/data" >&2
  exit 2
fi

if [ ! -f "$WORK/chat_sp.model" ]; then
  # The MAP-NEO SentencePiece model plus <|im_start|> and <|im_end|> as single user-defined pieces.
  python tools/train_tokenizer.py extend --model "$SHARED/tokenizers/map_neo_sp.model" \
    --output "$WORK/chat_sp.model" --user-defined "<|im_start|>" "<|im_end|>"
fi

TOK=(--tokenizer-type sentencepiece --tokenizer-model "$WORK/chat_sp.model")
for lang in zh en; do
  [ -f "$WORK/sft_$lang.idx" ] || python tools/preprocess_sft.py --input "$SHARED/sft/alpaca_${lang}_demo.json" \
      --output-prefix "$WORK/sft_$lang" --language "$lang" --seq-length "$SEQ" "${TOK[@]}"
  [ -f "$WORK/dpo_$lang.idx" ] || python tools/preprocess_dpo.py --input "$SHARED/dpo/dpo_${lang}_demo.json" \
      --output-prefix "$WORK/dpo_$lang" --language "$lang" --seq-length "$DPO_SEQ" "${TOK[@]}"
done
