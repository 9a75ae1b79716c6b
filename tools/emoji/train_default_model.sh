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
#      K 512, ch 32 x [1,2,4,4]), the first 1900 steps of a 3600-step cosine schedule (the
#      shipped model stopped there to leave the session's time to stage 2)
#      -> WORK/s1/emoji-stage1.safetensors
#   3. transformer: hwaga train, tools/emoji/stage2.json (RQ-Transformer C 256, 6+2 layers,
#      8 heads; SentencePiece 4000 ids on the English and Korean captions, context 32), in two legs:
#      3a. 7000 steps of an 8000-step cosine from 5e-4 with dropout 0.1 -> WORK/s2
#      3b. a fine-tune of 3a's model (hwaga train --init) with a fresh cosine from 4e-4 and no
#          dropout (the emoji set is all this model has to know), stopped at 3375 of 7500 steps
#          -> WORK/s3
#      3c. a fine-tune of 3b's model with balanced batches (--balance: every emoji and style
#          equally often, its skin tones sharing one draw; plain epochs spend half the steps on
#          skin tones) -> WORK/s4
#   4. export (stage 2 in bf16, the recommended sampling settings) -> WORK/default.safetensors;
#      copy it to samples/models/ by hand
#   5. quality: tools/emoji/eval_quality.py -> WORK/quality.json
# HWAGA (default ./build/hwaga) and THREADS (default: all cores) can be set in the environment.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${1:-$HOME/.cache/hwaga/emoji-train}"
HWAGA="${HWAGA:-$ROOT/build/hwaga}"
THREADS="${THREADS:-0}"
S1_STEPS=3600      # length of stage 1's learning-rate schedule
S1_STOP=1900       # where the shipped model's stage 1 stopped (S1_STOP=3600 runs the whole schedule)
S2_STEPS=8000      # length of stage 2's learning-rate schedule
S2_STOP=7000       # where the shipped model's stage 2 stopped (learning rate 4e-5 of 5e-4 there)
S3_STEPS=7500      # the fine-tune leg (3b): its schedule's length
S3_STOP=3375       # where the shipped model's leg 3b stopped (for leg 3c)
S4_STEPS=6500      # the balanced leg (3c)
SAMPLING="--top-k 32 --top-p 0.9 --temperature 0.8"   # stored in the model file (chosen by a sweep)
mkdir -p "$WORK"
[ -x "$HWAGA" ] || { echo "no hwaga binary at $HWAGA (build it, or set HWAGA)" >&2; exit 1; }

# 1. data
if [ ! -f "$WORK/data/train.jsonl" ]; then
  /usr/bin/python3 "$ROOT/tools/emoji/prepare_emoji.py" --out "$WORK/data" --hwaga "$HWAGA"
fi

# 2. the image tokenizer (1900 steps x 16 pictures = 4.2 epochs); --stop-after counts the steps of
#    this run, so a resumed run stops at the same step S1_STOP
ckpt_step() {  # training steps done in the checkpoint $1 (0 when there is none)
  [ -f "$1" ] || { echo 0; return; }
  /usr/bin/python3 - "$1" <<'PY'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    meta = json.loads(f.read(n))["__metadata__"]
print(json.loads(meta["train"])["step"])
PY
}
if [ ! -f "$WORK/s1/emoji-stage1.safetensors" ]; then
  done_steps=$(ckpt_step "$WORK/s1/checkpoint.safetensors")
  if [ "$done_steps" -gt 0 ]; then
    if [ "$done_steps" -lt $S1_STOP ]; then
      "$HWAGA" train-tokenizer --work-dir "$WORK/s1" --resume --threads "$THREADS" --stop-after $((S1_STOP - done_steps))
    fi
  else
    mkdir -p "$WORK/s1"
    "$HWAGA" train-tokenizer --shards "$WORK/data/train/" --config "$ROOT/tools/emoji/stage1.json" \
      --work-dir "$WORK/s1" --steps $S1_STEPS --stop-after $S1_STOP --batch 16 --lr 3e-4 --min-lr 3e-5 \
      --warmup 100 --save-every 100 --sample-every 200 --eval-shards "$WORK/data/eval/" --eval-count 64 \
      --seed 1 --threads "$THREADS"
  fi
  "$HWAGA" train-tokenizer --work-dir "$WORK/s1" --resume --export-only -o "$WORK/s1/emoji-stage1.safetensors"
fi

# 3. the transformer (7000 steps x 16 samples = 15.6 epochs, one caption variant per sample and epoch)
if [ ! -f "$WORK/s2/done" ]; then
  done_steps=$(ckpt_step "$WORK/s2/checkpoint.safetensors")
  if [ "$done_steps" -gt 0 ]; then
    if [ "$done_steps" -lt $S2_STOP ]; then
      "$HWAGA" train --work-dir "$WORK/s2" --resume --threads "$THREADS" --stop-after $((S2_STOP - done_steps))
    fi
  else
    "$HWAGA" train --tokenizer "$WORK/s1/emoji-stage1.safetensors" --shards "$WORK/data/train/" \
      --config "$ROOT/tools/emoji/stage2.json" --text-tokenizer spm:4000 --work-dir "$WORK/s2" \
      --steps $S2_STEPS --stop-after $S2_STOP --batch 16 --lr 5e-4 --min-lr 2e-5 --warmup 300 --dropout 0.1 --seed 1 \
      --save-every 200 --sample-every 1000 --sample-prompt "red apple, google style" \
      --sample-prompt "빨간 사과, 구글 스타일" --sample-prompt "grinning face, twitter style" \
      --threads "$THREADS"
  fi
  touch "$WORK/s2/done"
fi
# 3b/3c. the fine-tune legs: each starts from the leg before (as an f32 model file) with fresh
#        AdamW moments; the shards and stage 1 are the same, so the code cache is reused
leg() {  # leg PREV_DIR DIR STEPS STOP SEED LR WARMUP EXTRA...
  local prev=$1 dir=$2 steps=$3 stop=$4 seed=$5 lr=$6 warmup=$7
  shift 7
  [ -f "$dir/done" ] && return
  local done_steps
  done_steps=$(ckpt_step "$dir/checkpoint.safetensors")
  if [ "$done_steps" -gt 0 ]; then
    if [ "$done_steps" -lt "$stop" ]; then
      "$HWAGA" train --work-dir "$dir" --resume --threads "$THREADS" --stop-after $((stop - done_steps))
    fi
  else
    "$HWAGA" export --checkpoint "$prev/checkpoint.safetensors" -o "$prev/model-f32.safetensors" --dtype f32
    mkdir -p "$dir"
    cp "$prev/codes.safetensors" "$dir/"
    "$HWAGA" train --init "$prev/model-f32.safetensors" --tokenizer "$WORK/s1/emoji-stage1.safetensors" \
      --shards "$WORK/data/train/" --work-dir "$dir" \
      --steps "$steps" --stop-after "$stop" --batch 16 --lr "$lr" --min-lr 1e-5 --warmup "$warmup" --dropout 0 \
      --seed "$seed" --save-every 250 --sample-every 1000 --sample-prompt "red apple, google style" \
      --sample-prompt "빨간 사과, 구글 스타일" --sample-prompt "grinning face, twitter style" \
      --threads "$THREADS" "$@"
  fi
  touch "$dir/done"
}
leg "$WORK/s2" "$WORK/s3" $S3_STEPS $S3_STOP 2 4e-4 200
leg "$WORK/s3" "$WORK/s4" $S4_STEPS $S4_STEPS 3 3e-4 100 --balance

# 4. export
# shellcheck disable=SC2086
"$HWAGA" export --checkpoint "$WORK/s4/checkpoint.safetensors" -o "$WORK/default.safetensors" --dtype bf16 $SAMPLING
ls -l "$WORK/default.safetensors"

# 5. quality
/usr/bin/python3 "$ROOT/tools/emoji/eval_quality.py" --model "$WORK/default.safetensors" --data "$WORK/data" \
  --split eval --max-captions 100 -n 4 --lang both --out "$WORK/quality-eval.json" --hwaga "$HWAGA"
/usr/bin/python3 "$ROOT/tools/emoji/eval_quality.py" --model "$WORK/default.safetensors" --data "$WORK/data" \
  --split train --max-captions 100 -n 4 --lang both --skip-recon --out "$WORK/quality-train.json" --hwaga "$HWAGA"
