#!/usr/bin/env bash
# Reproduces hwaga's default model (samples/models/default.safetensors): an emoji painter trained
# by hwaga on the CPU from the emoji data of tools/emoji/prepare_emoji.py.
#
#   tools/emoji/train_default_model.sh [WORK]        (default WORK: ~/.cache/hwaga/emoji-train)
#
# Every stage resumes: run the script again after a stop (Ctrl-C saves a checkpoint) and it
# continues where it was; a finished stage is skipped. Stages:
#   1. data: tools/emoji/prepare_emoji.py -> WORK/data/{train,eval}/emoji-*.tar (needs npm once)
#   2. image tokenizer: hwaga train-tokenizer, tools/emoji/stage1.json (RQ-VAE 64x64 -> 8x8x4,
#      K 512, ch 32 x [1,2,4,4]) -> WORK/s1/emoji-stage1.safetensors
#   3. transformer: hwaga train, tools/emoji/stage2.json (RQ-Transformer C 256, 6+2 layers,
#      8 heads; SentencePiece 4000 ids on the English and Korean captions, context 32)
#   4. export (stage 2 in bf16) -> WORK/default.safetensors; copy it to samples/models/ by hand
#   5. quality: tools/emoji/eval_quality.py -> WORK/quality.json
# HWAGA (default ./build/hwaga) and THREADS (default: all cores) can be set in the environment.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${1:-$HOME/.cache/hwaga/emoji-train}"
HWAGA="${HWAGA:-$ROOT/build/hwaga}"
THREADS="${THREADS:-0}"
S1_STEPS=3600
S2_STEPS=12000
mkdir -p "$WORK"
[ -x "$HWAGA" ] || { echo "no hwaga binary at $HWAGA (build it, or set HWAGA)" >&2; exit 1; }

# 1. data
if [ ! -f "$WORK/data/train.jsonl" ]; then
  /usr/bin/python3 "$ROOT/tools/emoji/prepare_emoji.py" --out "$WORK/data" --hwaga "$HWAGA"
fi

# 2. the image tokenizer (3600 steps x 16 pictures = 8 epochs)
if [ ! -f "$WORK/s1/emoji-stage1.safetensors" ]; then
  if [ -f "$WORK/s1/checkpoint.safetensors" ]; then
    "$HWAGA" train-tokenizer --work-dir "$WORK/s1" --resume --threads "$THREADS" -o "$WORK/s1/emoji-stage1.safetensors"
  else
    mkdir -p "$WORK/s1"
    "$HWAGA" train-tokenizer --shards "$WORK/data/train/" --config "$ROOT/tools/emoji/stage1.json" \
      --work-dir "$WORK/s1" --steps $S1_STEPS --batch 16 --lr 3e-4 --min-lr 3e-5 --warmup 100 \
      --save-every 100 --sample-every 200 --eval-shards "$WORK/data/eval/" --eval-count 64 --seed 1 \
      --threads "$THREADS" -o "$WORK/s1/emoji-stage1.safetensors"
  fi
fi

# 3. the transformer (12000 steps x 16 samples = 27 epochs, one caption variant per sample and epoch)
if [ ! -f "$WORK/s2/done" ]; then
  if [ -f "$WORK/s2/checkpoint.safetensors" ]; then
    "$HWAGA" train --work-dir "$WORK/s2" --resume --threads "$THREADS"
  else
    "$HWAGA" train --tokenizer "$WORK/s1/emoji-stage1.safetensors" --shards "$WORK/data/train/" \
      --config "$ROOT/tools/emoji/stage2.json" --text-tokenizer spm:4000 --work-dir "$WORK/s2" \
      --steps $S2_STEPS --batch 16 --lr 5e-4 --min-lr 2e-5 --warmup 300 --dropout 0.1 --seed 1 \
      --save-every 200 --sample-every 1000 --sample-prompt "red apple, google style" \
      --sample-prompt "빨간 사과, 구글 스타일" --sample-prompt "grinning face, twitter style" \
      --threads "$THREADS"
  fi
  touch "$WORK/s2/done"
fi

# 4. export
"$HWAGA" export --checkpoint "$WORK/s2/checkpoint.safetensors" -o "$WORK/default.safetensors" --dtype bf16
ls -l "$WORK/default.safetensors"

# 5. quality
/usr/bin/python3 "$ROOT/tools/emoji/eval_quality.py" --model "$WORK/default.safetensors" --data "$WORK/data" \
  --split eval --max-captions 100 -n 4 --lang both --out "$WORK/quality-eval.json" --hwaga "$HWAGA"
/usr/bin/python3 "$ROOT/tools/emoji/eval_quality.py" --model "$WORK/default.safetensors" --data "$WORK/data" \
  --split train --max-captions 100 -n 4 --lang both --skip-recon --out "$WORK/quality-train.json" --hwaga "$HWAGA"
