#!/usr/bin/env bash
# Builds the CUDA-enabled Release binaries that tests/gpu/device_check.sh runs on a GPU machine
# that can build nothing itself, and packs them with the shared libraries they need into
# build-device/ (carried to that machine as is; /build*/ is git-ignored):
#   build-device/bin/   test_cuda_ops test_cuda_transformer_ops test_cuda_t2i test_cuda_stage1 test_cuda_sampler
#                       test_cuda_train_ops test_cuda_train test_cuda_train_stage1 bench_gpu_stage1 bench_gpu_t2i
#                       hwaga (stripped)
#   build-device/lib/   every shared library from `ldd` except glibc, libstdc++, libgcc, libm,
#                       the CUDA driver and the CUDA libraries (cudart is static; cuBLAS/cuDNN
#                       come from the device), or lib.tar.xz instead when lib/ would exceed the
#                       size budget (device_check.sh unpacks it).
# usage: tools/pack_device_build.sh [BUILD_DIR]   (default build-cuda; the folder is configured if new)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${1:-$ROOT/build-cuda}"
OUTD="$ROOT/build-device"
BUDGET_MIB=${BUDGET_MIB:-55}
CORE=(test_cuda_ops test_cuda_transformer_ops test_cuda_t2i test_cuda_stage1 test_cuda_sampler test_cuda_train_ops
      test_cuda_train test_cuda_train_stage1 bench_gpu_stage1 bench_gpu_t2i)
TARGETS=("${CORE[@]}" hwaga)

cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHWAGA_CUDA=ON -DHWAGA_SANITIZE=OFF >/dev/null
cmake --build "$BUILD" --target "${CORE[@]}" -j"$(nproc)"
# The CLI is packed when it builds (others' work in progress must not block the GPU check).
if ! cmake --build "$BUILD" --target hwaga -j"$(nproc)"; then
  echo "pack: WARNING: the hwaga binary did not build; packing without it" >&2
  TARGETS=("${CORE[@]}")
fi

rm -rf "$OUTD"
mkdir -p "$OUTD/bin" "$OUTD/lib"
for t in "${TARGETS[@]}"; do
  f=$(find "$BUILD" -maxdepth 2 -type f -name "$t" -perm -u+x | head -n1)
  [ -n "$f" ] || { echo "pack: $t not built under $BUILD" >&2; exit 1; }
  cp "$f" "$OUTD/bin/$t"
  strip --strip-unneeded "$OUTD/bin/$t"
done

# Libraries the device provides itself (or that must match its driver) are not copied.
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libmvec|libstdc\+\+|libgcc_s|libpthread|libdl\.so|librt\.so|libutil|libcuda\.so|libcudart|libcublas|libcublasLt|libcudnn|libnvidia|libnvrtc|libnvJitLink)'
for b in "$OUTD"/bin/*; do
  ldd "$b" | awk '/=>/ {print $1, $3}' | while read -r name path; do
    [[ "$name" =~ $skip ]] && continue
    [ "$path" = "not" ] && { echo "pack: $b needs $name, which is not found here" >&2; exit 1; }
    [ -e "$OUTD/lib/$name" ] && continue
    cp -L "$path" "$OUTD/lib/$name"
    strip --strip-unneeded "$OUTD/lib/$name" 2>/dev/null || true
  done
done

size_mib=$(du -sm "$OUTD" | cut -f1)
if [ "$size_mib" -gt "$BUDGET_MIB" ]; then
  echo "pack: $size_mib MiB > $BUDGET_MIB MiB, compressing lib/ into lib.tar.xz"
  tar -C "$OUTD" -cJf "$OUTD/lib.tar.xz" lib
  rm -rf "$OUTD/lib"
fi
cp "$ROOT/tests/gpu/device_check.sh" "$OUTD/" 2>/dev/null || true
echo "pack: build-device is $(du -sh "$OUTD" | cut -f1):"
ls -la "$OUTD" "$OUTD/bin"
[ -d "$OUTD/lib" ] && ls -la "$OUTD/lib"
# The binaries must start here (no GPU: the tests skip, the bench reports no device).
export LD_LIBRARY_PATH="$OUTD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ -d "$OUTD/lib" ]; then
  for t in test_cuda_ops test_cuda_transformer_ops test_cuda_t2i test_cuda_sampler; do
    "$OUTD/bin/$t" --gtest_brief=1 | tail -n 2
  done
  "$OUTD/bin/bench_gpu_t2i" --budget 5 || true
fi
