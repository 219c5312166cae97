#!/usr/bin/env bash
# README's first command: set up everything, then run the whole path on the sample corpus the
# project ships (examples/data/sample_corpus.jsonl, 300 original zh/en documents):
#   1. train a SentencePiece BPE tokenizer on it (CT-LLM settings: byte fallback, split digits, chat tokens)
#   2. tokenize it into a Megatron indexed dataset (.bin/.idx)
#   3. pretrain the tiny model with TP=2 x PP=2 (and sequence parallel) on 4 CPU processes over gloo
#   4. print the loss at the start and the end, and where the loss curve PNG is
# A few minutes on 2 cores. Extra arguments are section.key=value overrides for the training run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup_env.sh
. .venv/bin/activate

OUT=runs/quickstart
rm -rf "$OUT"
mkdir -p "$OUT"
python tools/train_tokenizer.py train --input examples/data/sample_corpus.jsonl \
  --model-prefix "$OUT/tokenizer/sample" --vocab-size 1200
python tools/preprocess_data.py --input examples/data/sample_corpus.jsonl \
  --tokenizer-type sentencepiece --tokenizer-model "$OUT/tokenizer/sample.model" --append-eod \
  --output-prefix "$OUT/data/sample" --workers 2
python tools/inspect_dataset.py "$OUT/data/sample_text_document" --samples 1

VOCAB=$(python -c "from megactllm.tokenizer import load_tokenizer as l; print(l('sentencepiece', '$OUT/tokenizer/sample.model').vocab_size)")
# Four ranks share two cores: one intra-op thread each.
export OMP_NUM_THREADS=1
torchrun --standalone --nproc-per-node 4 -m megactllm.train --config examples/configs/tiny_cpu.yaml \
  model.vocab_size="$VOCAB" \
  data.tokenizer_model="$OUT/tokenizer/sample.model" \
  "data.data_path=[$OUT/data/sample_text_document]" \
  data.data_cache_path="$OUT/data_cache" \
  checkpoint.save="$OUT/checkpoints" checkpoint.load=null \
  logging.tensorboard_dir="$OUT/tensorboard" logging.dir="$OUT" \
  "$@"

python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
train = [r for r in rows if r.get("kind", "train") == "train" and "loss" in r]
if train:
    print(f"loss: {train[0]['loss']:.3f} at iteration {train[0]['iteration']} -> {train[-1]['loss']:.3f} at iteration {train[-1]['iteration']}")
print(f"loss curve: {out / 'loss_curve.png'}   tensorboard: tensorboard --logdir {out / 'tensorboard'}")
PY
