#!/usr/bin/env bash
# A quick look at a stage-2 training run while it trains (or after): exports its checkpoint as a
# model file, measures how much it uses the text and how far greedy decoding follows the training
# pictures (build/exposure_diag, docs/quality/exposure.md), then the prompt faithfulness on
# CAPTIONS English training captions x 2 pictures (tools/emoji/eval_quality.py, pixel space).
#
#   tools/emoji/check_run.sh WORK_DIR DATA [OUT_PREFIX]   (DATA: prepare_emoji.py's --out)
#
# Writes OUT_PREFIX.safetensors, OUT_PREFIX.txt (the report) and OUT_PREFIX.json (default prefix
# WORK_DIR/check-<step>). The model is exported in bf16 with the default model's sampling
# settings (top-k 32, top-p 0.9, temperature 0.8). A training process on the same cores slows
# it down, and is slowed by it: pause it (kill -STOP, then -CONT) for clean figures.
# HWAGA (default ./build/hwaga), DIAG (default ./build/exposure_diag) and CAPTIONS (96) can be set
# in the environment.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK=${1:?usage: check_run.sh WORK_DIR DATA [OUT_PREFIX]}
DATA=${2:?usage: check_run.sh WORK_DIR DATA [OUT_PREFIX]}
HWAGA="${HWAGA:-$ROOT/build/hwaga}"
DIAG="${DIAG:-$ROOT/build/exposure_diag}"
CAPTIONS=${CAPTIONS:-96}
[ -f "$WORK/checkpoint.safetensors" ] || { echo "check_run: no checkpoint in $WORK" >&2; exit 1; }
[ -f "$WORK/codes.safetensors" ] || { echo "check_run: no code cache in $WORK (not a stage-2 work dir?)" >&2; exit 1; }
step=$(/usr/bin/python3 - "$WORK/checkpoint.safetensors" <<'PY'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    print(json.loads(json.loads(f.read(n))["__metadata__"]["train"])["step"])
PY
)
OUT=${3:-$WORK/check-$step}
"$HWAGA" export --checkpoint "$WORK/checkpoint.safetensors" -o "$OUT.safetensors" --dtype bf16 \
  --top-k 32 --top-p 0.9 --temperature 0.8 > /dev/null
{
  echo "# tools/emoji/check_run.sh $WORK (step $step)"
  if [ -x "$DIAG" ]; then "$DIAG" "$OUT.safetensors" "$WORK/codes.safetensors" 40; else echo "(no $DIAG: build the exposure_diag target)"; fi
  /usr/bin/python3 "$ROOT/tools/emoji/eval_quality.py" --model "$OUT.safetensors" --data "$DATA" --split train \
    --max-captions "$CAPTIONS" -n 2 --lang en --skip-recon --hwaga "$HWAGA" --out "$OUT.json" |
    grep -E '^(  lang|  en   pixels)'
} > "$OUT.txt" 2>&1 || { cat "$OUT.txt" >&2; exit 1; }
cat "$OUT.txt"
