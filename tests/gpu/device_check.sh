#!/usr/bin/env bash
# The GPU check, run on a lent GPU machine that cannot build anything: it uses the binaries that
# tools/pack_device_build.sh packed into build-device/ here. Stages (each under a timeout, each
# logged, a failure does not stop the others; the whole run stays under ~7 minutes), the most
# important results first:
#   1. nvidia-smi and the libraries the binaries will load (cuBLAS/cuDNN from the device)
#   2. GPU tests (CUDA vs the CPU backend; a skip is a failure here): test_cuda_ops,
#      test_cuda_transformer_ops (LayerNorm/GELU/embedding/attention over a KV cache/16-bit
#      linear), test_cuda_t2i (tiny RQ-Transformer and minDALL-E: logits and greedy codes),
#      test_cuda_stage1, test_cuda_sampler (the GPU sampler picks the host sampler's codes; its
#      time per step at 64 x 16384), test_cuda_train_ops (every stage-2 training op of the CUDA
#      TrainOps against the CPU's) and test_cuda_train (RQ-Transformer and minDALL-E training
#      steps on the GPU against the same steps on the CPU: losses, gradients, AdamW updates,
#      checkpoints moving between the devices, NCCL with one rank where libnccl.so.2 is found),
#      test_cuda_train_stage1 (each taming conv-net training op, then RQ-VAE steps, GPU vs CPU)
#   3. tools/bench_train_stage2.py --device cuda: stage-2 training tokens/s, hwaga vs PyTorch (f32, bf16)
#   3b. bench_gpu_stage1 (hwaga: RQ-VAE / VQGAN decode + encode, batch 1 and 64, f32 and bf16 weights,
#      card copy bandwidth and cuBLASLt 8192^3 rates)
#   4. bench_gpu_t2i (hwaga: rq-3.9b and mindalle-1.3b code generation, random bf16 weights,
#      batch 1, 64 and a larger one when time allows)
#   5. tests/gpu/torch_stage1_bench.py and tests/gpu/torch_t2i_bench.py (PyTorch on the same shapes)
#   5b. tools/bench_train_stage1.py --device cuda (RQ-VAE training pictures/s, hwaga vs PyTorch), if time is left
#   6. a short table (always printed; also $OUT/device_check.txt, with the logs, when $OUT is set)
# usage, from the repository root:  bash tests/gpu/device_check.sh [build-device]
set -u
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PACK="$(cd "${1:-$ROOT/build-device}" 2>/dev/null && pwd || echo "${1:-$ROOT/build-device}")"
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-420}
T0=$(date +%s)
WORK="$(mktemp -d /tmp/hwaga-device-check.XXXXXX)"
declare -A RC
STAGES=()

stage() {  # stage NAME LIMIT_S CMD...  (output to the console and $WORK/NAME.log)
  local name=$1 limit=$2
  shift 2
  local left=$((T0 + BUDGET_S - $(date +%s)))
  [ "$limit" -gt "$left" ] && limit=$left
  STAGES+=("$name")
  if [ "$limit" -lt 5 ]; then
    echo "=== $name: skipped, the time budget is spent"
    RC[$name]="skipped"
    return
  fi
  echo "=== $name (limit ${limit}s): $*"
  local s=$(date +%s)
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && rc="timeout"
  RC[$name]="$rc ($(($(date +%s) - s))s)"
  echo "=== $name: rc $rc"
}

echo "=== hwaga device check: pack $PACK, $(date -u +%FT%TZ)"
timeout 20 nvidia-smi || echo "nvidia-smi failed"

# --- libraries: ours from the pack, CUDA's from the device ---
LIBDIR="$PACK/lib"
if [ -f "$PACK/lib.tar.xz" ]; then
  tar -C "$WORK" -xJf "$PACK/lib.tar.xz" 2>/dev/null ||
    python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$PACK/lib.tar.xz" "$WORK"
  LIBDIR="$WORK/lib"
fi
CUDA_DIRS=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = []
try:
    roots += site.getsitepackages()
except Exception:
    pass
try:
    roots.append(site.getusersitepackages())
except Exception:
    pass
dirs = []
for r in roots:
    for pat in ("nvidia/**/libcudnn.so.9", "nvidia/**/libcublas.so.13", "nvidia/**/libcublasLt.so.13",
                "torch/lib/libcudnn.so.9", "torch/lib/libcublas.so.13",
                "nvidia/**/libnccl.so.2", "torch/lib/libnccl.so.2"):  # NCCL: dlopen'ed by --dist-backend nccl
        for f in glob.glob(os.path.join(r, pat), recursive=True):
            d = os.path.dirname(f)
            if d not in dirs:
                dirs.append(d)
print(":".join(dirs))
PY
)
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
  ls "$d"/libcudnn.so.9 "$d"/libcublas.so.13 >/dev/null 2>&1 && CUDA_DIRS="${CUDA_DIRS:+$CUDA_DIRS:}$d"
done
export LD_LIBRARY_PATH="$LIBDIR${CUDA_DIRS:+:$CUDA_DIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd "$PACK/bin/test_cuda_ops" 2>&1 | grep -E "cudnn|cublas|not found" || echo "ldd failed"

export HWAGA_REQUIRE_GPU=1       # on this machine a skipped GPU test is a failure
export NVIDIA_TF32_OVERRIDE=0    # belt and braces: no TF32 anywhere in the f32 parity tests

stage test_cuda_ops 60 "$PACK/bin/test_cuda_ops" --gtest_brief=1
stage test_cuda_transformer_ops 60 "$PACK/bin/test_cuda_transformer_ops" --gtest_brief=1
stage test_cuda_t2i 60 "$PACK/bin/test_cuda_t2i" --gtest_brief=1
stage test_cuda_stage1 45 "$PACK/bin/test_cuda_stage1" --gtest_brief=1
stage test_cuda_sampler 45 "$PACK/bin/test_cuda_sampler" --gtest_brief=1
stage test_cuda_train_ops 45 "$PACK/bin/test_cuda_train_ops" --gtest_brief=1
stage test_cuda_train 60 "$PACK/bin/test_cuda_train" --gtest_brief=1
stage test_cuda_train_stage1 45 "$PACK/bin/test_cuda_train_stage1" --gtest_brief=1
unset NVIDIA_TF32_OVERRIDE
# stage-2 training throughput, hwaga train --device cuda against PyTorch on the GPU, f32 and bf16
for mm in f32 bf16; do
  stage bench_train_$mm 75 python3 "$ROOT/tools/bench_train_stage2.py" --hwaga "$PACK/bin/hwaga" --device cuda \
    --threads 4 --embed-dim 512 --body 8 --head 4 --heads 8 --context 32 --batch 32 --steps 30 --matmul $mm
done
stage bench_hwaga 60 "$PACK/bin/bench_gpu_stage1" --iters 3
# bench_gpu_t2i stops starting new runs after --budget s (building 3.9B random weights included).
stage bench_t2i 130 "$PACK/bin/bench_gpu_t2i" --budget 110
stage bench_torch 60 python3 "$ROOT/tests/gpu/torch_stage1_bench.py" --iters 3
stage bench_torch_t2i 90 python3 "$ROOT/tests/gpu/torch_t2i_bench.py" --budget 75
# last, in whatever time is left: stage-1 (RQ-VAE) training throughput, hwaga train-tokenizer
# --device cuda against PyTorch on the GPU
stage bench_train_s1 60 python3 "$ROOT/tools/bench_train_stage1.py" --hwaga "$PACK/bin/hwaga" --device cuda \
  --threads 4 --preset emoji64 --batch 32 --steps 8

# --- the table ---
python3 - "$WORK" > "$WORK/table.txt" <<'PY' || echo "(table script failed)" > "$WORK/table.txt"
import os, re, sys
work = sys.argv[1]
rows = []
for name in ("bench_hwaga.log", "bench_torch.log"):
    p = os.path.join(work, name)
    if os.path.exists(p):
        for line in open(p, errors="replace"):
            if line.startswith("RESULT "):
                rows.append(dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv))
card = {r.get("what") + ("_" + r["dtype"] if "dtype" in r else ""): r for r in rows if r.get("impl") == "card"}
gbs = card.get("d2d_copy", {}).get("gbs", "?")
bf16 = card.get("matmul_8192_bf16", {}).get("tflops", "?")
f32 = card.get("matmul_8192_f32", {}).get("tflops", "?")
print(f"card: d2d copy {gbs} GB/s, cuBLASLt 8192^3 bf16 {bf16} TFLOP/s, f32 {f32} TFLOP/s")
torch = {(r["model"], r["op"], r["dtype"], r["batch"]): r for r in rows if r.get("impl") == "torch"}
hdr = f"{'model':6} {'op':6} {'dtype':5} {'B':>3} | {'ms/pic':>8} {'pic/s':>8} {'TFLOP/s':>7} {'%bf16mm':>7} {'peakMiB':>7} | {'torch f32':>9} {'torch bf16':>10} | {'x f32':>6} {'x bf16':>6}"
print(hdr)
print("-" * len(hdr))
def f(x, d="?"):
    return x if x is not None else d
for r in rows:
    if r.get("impl") != "hwaga":
        continue
    k = (r["model"], r["op"])
    tf = torch.get(k + ("f32", r["batch"]), {}).get("ms_per_pic")
    tb = torch.get(k + ("bf16", r["batch"]), {}).get("ms_per_pic")
    mine = float(r["ms_per_pic"])
    pct = "?"
    try:
        pct = f"{100.0 * float(r['tflops']) / float(bf16):.0f}%"
    except Exception:
        pass
    xf = f"{float(tf) / mine:.2f}" if tf else "?"
    xb = f"{float(tb) / mine:.2f}" if tb else "?"
    print(f"{r['model']:6} {r['op']:6} {r['dtype']:5} {r['batch']:>3} | {mine:8.3f} {float(r['pics_per_s']):8.1f} "
          f"{float(r['tflops']):7.1f} {pct:>7} {r['peak_mib']:>7} | {f(tf):>9} {f(tb):>10} | {xf:>6} {xb:>6}")
print("(x f32 / x bf16: PyTorch ms per picture / hwaga ms per picture at the same batch; >1 means hwaga is faster."
      " %bf16mm: conv TFLOP/s as a share of the card's cuBLASLt bf16 rate. Torch-only rows:)")
for k, r in torch.items():
    print(f"  torch {' '.join(k)}: {r['ms_per_pic']} ms/pic, peak {r['peak_mib']} MiB")

# text-to-image code generation (stage 2 only), hwaga vs the PyTorch sampling loop
gen = []
for name in ("bench_t2i.log", "bench_torch_t2i.log"):
    p = os.path.join(work, name)
    if os.path.exists(p):
        for line in open(p, errors="replace"):
            if line.startswith("RESULT "):
                gen.append(dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv))
builds = [r for r in gen if r.get("what") == "build"]
for r in builds:
    print(f"t2i build: {r.get('impl')} {r.get('model')} {r.get('params_m', '?')}M params in {r.get('seconds', '?')} s")
tt = {(r["model"], r["batch"]): r for r in gen if r.get("impl") == "torch" and r.get("what") == "generate"}
hdr = (f"{'t2i model':14} {'B':>4} | {'s/pic':>8} {'pic/s':>8} {'eager':>8} {'graphs':>6} {'wGB/s':>6} {'peakMiB':>7} | "
       f"{'torch s/pic':>11} {'steps':>8} | {'x torch':>7}")
print(hdr)
print("-" * len(hdr))
for r in gen:
    if r.get("impl") != "hwaga" or r.get("what") != "generate":
        continue
    t = tt.get((r["model"], r["batch"]), {})
    ts = t.get("s_per_pic")
    x = f"{float(ts) / float(r['s_per_pic']):.2f}" if ts else "?"
    print(f"{r['model']:14} {r['batch']:>4} | {float(r['s_per_pic']):8.4f} {float(r['pics_per_s']):8.2f} "
          f"{float(r.get('eager_s_per_pic', 0)):8.4f} {r.get('graph_launches', '?'):>6} {r['weight_gbs']:>6} {r['peak_mib']:>7} | {ts or '?':>11} "
          f"{t.get('steps', '?'):>8} | {x:>7}")
print("(t2i: seconds per picture for the codes (stage 2; no stage-1 decode), bf16 weights, the presets'"
      " top-k/top-p; eager = s/pic op by op (batch 1 only; s/pic replays one CUDA graph per step);"
      " graphs = graph replays; wGB/s = weight bytes the loop reads / time;"
      " x torch = PyTorch s/pic / hwaga s/pic, >1 means hwaga is faster; torch steps D/T < T = extrapolated)")
for k, r in tt.items():
    if not any(g.get("impl") == "hwaga" and (g.get("model"), g.get("batch")) == k for g in gen):
        print(f"  torch {k[0]} batch {k[1]}: {r['s_per_pic']} s/pic, steps {r['steps']}, peak {r['peak_mib']} MiB")
PY
{
  echo "=== hwaga device check summary ($(($(date +%s) - T0)) s)"
  for s in "${STAGES[@]}"; do
    st="${RC[$s]}"
    case "$st" in 0\ *) v="ok";; *) v="FAILED";; esac
    printf "  %-26s %-7s rc %s\n" "$s" "$v" "$st"
  done
  grep -hE "^\[  (FAILED|SKIPPED) +\]|tests? ran|PASSED" "$WORK"/test_cuda_*.log 2>/dev/null | sed 's/^/  /'
  grep -h "greedy codes equal" "$WORK"/test_cuda_t2i.log 2>/dev/null | sed 's/^/  /'
  grep -hE "^\[ sampler \]|sampled codes equal" "$WORK"/test_cuda_sampler.log 2>/dev/null | sed 's/^/  /'
  grep -h "^# FAILED" "$WORK"/bench_*.log 2>/dev/null | sed 's/^/  /'
  grep -h "WARNING" "$WORK"/*.log 2>/dev/null | sort -u | head -n 5 | sed 's/^/  /'
  grep -h "^# .*cuda (" "$WORK"/bench_hwaga.log 2>/dev/null | sort -u | sed 's/^/  /'
  grep -h "^RESULT impl=train" "$WORK"/bench_train_*.log 2>/dev/null | sed 's/^/  /'
  cat "$WORK/table.txt"
} | tee "$WORK/summary.txt"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$WORK/summary.txt" "$OUT/device_check.txt"
  cp "$WORK"/*.log "$OUT/" 2>/dev/null || true
fi
