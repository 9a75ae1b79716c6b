#!/usr/bin/env bash
# The whole test sequence, as CI runs it (.ci/run calls exactly this) and as anyone can run it
# on a fresh Debian 12 machine from the source folder:
#
#   bash tools/test.sh
#
#   1. installs the Debian packages (apt-get; sudo when not root). HWAGA_SKIP_APT=1 skips this.
#   2. build/       Release build (the CUDA backend is compiled in when nvcc is found at
#                   /usr/local/cuda or on PATH); ctest runs every test: unit (GoogleTest), the
#                   Python CLI and parity tests against PyTorch, and the GPU tests (which skip
#                   without a GPU).
#   3. build-asan/  AddressSanitizer + UBSan build without CUDA; runs the unit tests and the CLI
#                   tests (bad input included) against the sanitized hwaga. A sanitizer report
#                   fails the run (exit code 86, checked by the tests too).
#
# JOBS (default: the number of cores) sets build and ctest parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libpng-dev libstb-dev libcli11-dev nlohmann-json3-dev libyaml-cpp-dev libarchive-dev
  libsentencepiece-dev libicu-dev libzip-dev libdnnl-dev libjpeg-dev
  libgtest-dev libbenchmark-dev
  python3-torch python3-numpy python3-yaml
  # Debian's python3-torch multiplies through whatever libblas.so.3 is installed; without this
  # it is Netlib's reference BLAS (~1.2 GFLOP/s, 45x slower than OpenBLAS on an AVX2 core), which
  # made the PyTorch references of the parity tests most of CI's time (tools/torch_blas.py).
  libopenblas0-pthread
)
JOBS=${JOBS:-$(nproc)}
t_start=$(date +%s)
step() { printf '\n==== [%4ds] %s\n' "$(($(date +%s) - t_start))" "$*"; }

if [ "${HWAGA_SKIP_APT:-0}" != 1 ]; then
  step "installing packages"
  SUDO=
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
fi

step "Release build (build/)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$JOBS"

# One BLAS thread per test process: ctest already runs JOBS tests at once, and OpenBLAS's own
# pool (one thread per core, spinning) would oversubscribe the cores.
export OPENBLAS_NUM_THREADS=1

step "Release tests"
ctest --test-dir build --output-on-failure -j"$JOBS" --timeout 1500

step "ASan/UBSan build (build-asan/, no CUDA)"
# -O1 -g1 (line tables, enough for the sanitizers' file:line stack traces): the instrumented
# -O2 -g build took 23 min of CI's 2 cores, -O1 -g1 less than half of that (train.cpp: 109 s -> 49 s).
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHWAGA_SANITIZE=ON -DHWAGA_CUDA=OFF \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG"
cmake --build build-asan -j"$JOBS"

step "ASan/UBSan tests: unit + CLI"
export ASAN_OPTIONS=exitcode=86:abort_on_error=0:detect_leaks=1:strict_string_checks=1
export UBSAN_OPTIONS=exitcode=86:print_stacktrace=1:halt_on_error=1
# Under the sanitizers the real-width minDALL-E fixture, the random rq-cc3m-654m preset and the
# real-width RQ sampling cases (6 minutes together, instrumented) run the same code as the
# real-width RQ teacher-forced case and the tiny cases do; the Release run above checks them all.
ctest --test-dir build-asan --output-on-failure -j"$JOBS" --timeout 1500 --no-tests=error -L '^(unit|fuzz)$' \
  -E '(/gpt_real|^Stage2Random\.|^Cases/Stage2Models\.(Greedy|Sampled).*/rq_real)'
ctest --test-dir build-asan --output-on-failure -j"$JOBS" --timeout 1500 --no-tests=error -R '^py_test_(bad_input|stage1_cli)$'

step "all tests passed"
