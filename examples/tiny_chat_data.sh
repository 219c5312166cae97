#!/usr/bin/env bash
# Shared first steps of the tiny SFT/DPO examples (sourced): a tokenizer with the chat tokens and
# the preprocessed SFT and DPO datasets under work/tiny_chat/. Steps already done are skipped.
set -euo pipefail
SHARED=${SHARED:-../shared/data}
WORK=work/tiny_chat
SEQ=${SEQ:-256}
mkdir -p "$WORK"
if [ ! -d "$SHARED" ]; then
  echo "error: $SHARED (the shared real data) is absent; set SHARED=/path/to/shared/data" >&2
  exit 2
fi

if [ ! -f "$WORK/chat_sp.model" ]; then
  # The MAP-NEO SentencePiece model plus <|im_start|> and <|im_end|> as single user-defined pieces.
  python - "$SHARED/tokenizers/map_neo_sp.model" "$WORK/chat_sp.model" <<'PY'
import sys
from megactllm.tokenizer.chat_template import CHAT_SPECIAL_TOKENS
base, out = sys.argv[1], sys.argv[2]
try:
    from megactllm.tokenizer.extend import extend_sentencepiece
    extend_sentencepiece(base, out, list(CHAT_SPECIAL_TOKENS))
except ImportError:  # before the vocabulary-extension module: edit the model proto directly
    from sentencepiece import sentencepiece_model_pb2 as pb
    proto = pb.ModelProto()
    proto.ParseFromString(open(base, "rb").read())
    for piece in CHAT_SPECIAL_TOKENS:
        p = proto.pieces.add()
        p.piece, p.score, p.type = piece, 0.0, pb.ModelProto.SentencePiece.USER_DEFINED
    open(out, "wb").write(proto.SerializeToString())
print(f"chat tokenizer: {out}")
PY
fi

TOK=(--tokenizer-type sentencepiece --tokenizer-model "$WORK/chat_sp.model" --seq-length "$SEQ")
for lang in zh en; do
  [ -f "$WORK/sft_$lang.idx" ] || python tools/preprocess_sft.py --input "$SHARED/sft/alpaca_${lang}_demo.json" \
      --output-prefix "$WORK/sft_$lang" --language "$lang" "${TOK[@]}"
  [ -f "$WORK/dpo_$lang.idx" ] || python tools/preprocess_dpo.py --input "$SHARED/dpo/dpo_${lang}_demo.json" \
      --output-prefix "$WORK/dpo_$lang" --language "$lang" "${TOK[@]}"
done
