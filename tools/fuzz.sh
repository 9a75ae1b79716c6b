#!/usr/bin/env bash
# Real coverage-guided fuzzing of hwaga's parsers with clang's libFuzzer (ctest only replays the
# seed corpora plus fixed mutants; see tests/fuzz/replay_main.cpp).
#
#   bash tools/fuzz.sh [SECONDS] [TARGET...]      e.g.  bash tools/fuzz.sh 60 image config
#
# Builds build-fuzz/ with clang (-fsanitize=fuzzer-no-link,address,undefined on every hwaga
# source; the fuzz targets tests/fuzz/fuzz_*.cpp linked with -fsanitize=fuzzer), then runs each
# target (default: all) for SECONDS (default 60) on a scratch copy of its seed corpus
# tests/fuzz/corpus/<target>/ (the committed seeds are never modified; new interesting inputs
# stay in build-fuzz/corpus/<target>/ and can be minimised into the seeds by hand).
# A crash, leak, UBSan report or timeout stops that target: libFuzzer writes the input to
# build-fuzz/crashes/<target>/ and prints the stack; replay it with the plain build:
#   build/tests/fuzz_<target> build-fuzz/crashes/<target>/crash-...
# and keep it as a regression seed in tests/fuzz/crashes/<target>/ until the parser is fixed.
#
# Needs clang and its libFuzzer runtime: Debian 12 packages clang and libclang-rt-14-dev
# (libclang_rt.fuzzer-x86_64.a). JOBS (default: the number of cores) sets build parallelism;
# FUZZ_JOBS (default 1) runs that many fuzzing processes per target; FUZZ_RSS_MB (default 2048)
# is libFuzzer's memory limit.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-60}
shift || true
JOBS=${JOBS:-$(nproc)}
FUZZ_JOBS=${FUZZ_JOBS:-1}
FUZZ_RSS_MB=${FUZZ_RSS_MB:-2048}
CLANG=${CLANG:-clang}
CLANGXX=${CLANGXX:-clang++}
BUILD=build-fuzz

command -v "$CLANGXX" >/dev/null || { echo "fuzz.sh: $CLANGXX not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }
rt=$("$CLANGXX" -print-file-name=libclang_rt.fuzzer-x86_64.a)
[ -f "$rt" ] || rt=$("$CLANGXX" --print-resource-dir)/lib/linux/libclang_rt.fuzzer-x86_64.a
[ -f "$rt" ] || { echo "fuzz.sh: clang's libFuzzer runtime is missing (apt-get install libclang-rt-14-dev)" >&2; exit 2; }

TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  for f in tests/fuzz/fuzz_*.cpp; do t=${f##*/fuzz_}; TARGETS+=("${t%.cpp}"); done
fi

# oneDNN is left out: it is not involved in parsing, and Debian's build wants GCC's OpenMP.
CC=$CLANG CXX=$CLANGXX cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DHWAGA_CUDA=OFF -DHWAGA_DNNL=OFF -DHWAGA_SANITIZE=ON -DHWAGA_LIBFUZZER=ON \
  -DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link -DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link >/dev/null
cmake --build "$BUILD" -j"$JOBS" --target "${TARGETS[@]/#/fuzz_}"

export HWAGA_SHARED_DIR=${HWAGA_SHARED_DIR:-$PWD/../shared}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for t in "${TARGETS[@]}"; do
  work="$BUILD/corpus/$t" crashes="$BUILD/crashes/$t"
  mkdir -p "$work" "$crashes"
  echo "==== fuzz_$t for ${SECONDS_PER_TARGET}s"
  args=(-max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb="$FUZZ_RSS_MB" -timeout=10 -max_len=65536
        -artifact_prefix="$crashes/" -print_final_stats=1)
  [ "$FUZZ_JOBS" -gt 1 ] && args+=(-fork="$FUZZ_JOBS" -ignore_crashes=0)
  set +e
  "$BUILD/tests/fuzz_$t" "${args[@]}" "$work" "tests/fuzz/corpus/$t" >"$BUILD/fuzz_$t.log" 2>&1
  rc=$?
  set -e
  grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|==[0-9]+==ERROR|SUMMARY|.*runtime error|Test unit written|stat::)' "$BUILD/fuzz_$t.log" || true
  if [ $rc -ne 0 ]; then
    echo "fuzz_$t FAILED (exit $rc): see $BUILD/fuzz_$t.log and $crashes/" >&2
    status=1
  fi
done
exit $status
