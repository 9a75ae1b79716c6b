#!/usr/bin/env bash
# Picks the sampling settings stored in the default model (hwaga export --top-k/--top-p/
# --temperature/--cfg): prompt faithfulness (tools/emoji/eval_quality.py, pixel space) of MODEL for each
# setting below, on the same CAPTIONS English training captions x 2 pictures (default 96).
#
#   tools/emoji/sweep_sampling.sh MODEL DATA [OUT_DIR]     (DATA: prepare_emoji.py's --out)
#
# HWAGA (default ./build/hwaga), CAPTIONS and ONLY (names of the settings to run, e.g.
# ONLY="k32t08 k32t08g15"; default all) can be set in the environment.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MODEL=${1:?usage: sweep_sampling.sh MODEL DATA [OUT_DIR]}
DATA=${2:?usage: sweep_sampling.sh MODEL DATA [OUT_DIR]}
OUT=${3:-sweep}
HWAGA="${HWAGA:-$ROOT/build/hwaga}"
CAPTIONS=${CAPTIONS:-96}
mkdir -p "$OUT"
ONLY=${ONLY:-}
run() {
  local name=$1
  shift
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  /usr/bin/python3 "$ROOT/tools/emoji/eval_quality.py" --model "$MODEL" --data "$DATA" --split train \
    --max-captions "$CAPTIONS" -n 2 --lang en --skip-recon --hwaga "$HWAGA" --out "$OUT/$name.json" "$@" > "$OUT/$name.txt" 2>&1
  printf '%-8s %-45s %s\n' "$name" "$*" "$(grep -E '^  en   pixels' "$OUT/$name.txt" | awk '{print "top-1 " $3 "  top-5 " $4}')"
}
run family --top-k 1024 --top-p 0.95 --temperature 1
run k64 --top-k 64 --top-p none --temperature 1
run k32t09 --top-k 32 --top-p 0.9 --temperature 0.9
run k32t08 --top-k 32 --top-p 0.9 --temperature 0.8
run k32t06 --top-k 32 --top-p 0.8 --temperature 0.6
run k16t06 --top-k 16 --top-p none --temperature 0.6
run k8t07 --top-k 8 --top-p none --temperature 0.7
run k1 --top-k 1 --top-p none --temperature 1
# classifier-free guidance (a model trained with hwaga train --cfg-drop; others have no
# unconditional model to guide against)
run k32t08g125 --top-k 32 --top-p 0.9 --temperature 0.8 --cfg 1.25
run k32t08g15 --top-k 32 --top-p 0.9 --temperature 0.8 --cfg 1.5
run k32t08g2 --top-k 32 --top-p 0.9 --temperature 0.8 --cfg 2
run k32t08g3 --top-k 32 --top-p 0.9 --temperature 0.8 --cfg 3
run k32t1g15 --top-k 32 --top-p 0.9 --temperature 1 --cfg 1.5
