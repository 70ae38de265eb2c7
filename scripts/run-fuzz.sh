#!/usr/bin/env bash
# Build the libFuzzer targets with clang and run them.
#   scripts/run-fuzz.sh [SECONDS]       fuzz both targets for SECONDS each (a campaign: e.g. 3600)
#   scripts/run-fuzz.sh --ci [SECONDS]  CI smoke: fuzz_spec for SECONDS (default 30); fuzz_trace
#                                       replays its seeds and regression inputs only, because
#                                       mutated HDF5 files also reach bugs inside libhdf5 itself
#                                       (tests/fuzz/hdf5-library-bugs/) that would fail CI at random  Seeds come from
# tests/fuzz/seeds plus traces made with `kvstream gen`; new inputs go to
# build-fuzz/corpus-*.  Any crash, leak or sanitizer report fails the run and
# leaves the input in build-fuzz/artifacts/.  -malloc_limit_mb is raised
# because HDF5 1.10 mallocs whatever size a corrupt header claims (17 GiB
# seen) before failing; the RSS limit still catches real growth.
#   usage: scripts/run-fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ci=0
if [ "${1:-}" = "--ci" ]; then ci=1; shift; fi
secs=${1:-30}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[ -x build/kvstream ] || bash scripts/build.sh build
CC=clang cmake -S . -B build-fuzz -DKVSTREAM_FUZZ=ON -DKVSTREAM_NATIVE=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzz_spec fuzz_trace
mkdir -p build-fuzz/corpus-spec build-fuzz/corpus-trace build-fuzz/artifacts
cp tests/fuzz/seeds/spec-* build-fuzz/corpus-spec/
cp tests/data/fuzz-*.h5 build-fuzz/corpus-trace/
build/kvstream gen --tokens 16 --dim 4 --queries 4 --chunk 8 -o build-fuzz/corpus-trace/seed-gauss.h5 >/dev/null
build/kvstream gen --kind jl --tokens 12 --dim 3 --queries 3 --chunk 4 -o build-fuzz/corpus-trace/seed-jl.h5 >/dev/null
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
export LSAN_OPTIONS=suppressions=$PWD/tests/fuzz/lsan.supp
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
for t in spec trace; do
  echo "fuzz_$t: ${secs}s"
  rc=0
  mode=(-max_total_time="$secs")
  if [ "$ci" = 1 ] && [ "$t" = trace ]; then mode=(-runs=0); echo "fuzz_trace: replaying the corpus only (--ci)"; fi
  build-fuzz/tests/fuzz/fuzz_$t "${mode[@]}" -max_len=20000 -rss_limit_mb=4096 -malloc_limit_mb=65536 \
    -artifact_prefix=build-fuzz/artifacts/ -print_final_stats=1 build-fuzz/corpus-$t >build-fuzz/fuzz_$t.log 2>&1 || rc=$?
  grep -E "^(stat::number_of_executed_units|Done|==[0-9]+==ERROR|SUMMARY)" build-fuzz/fuzz_$t.log || true
  if [ "$rc" -ne 0 ]; then
    tail -30 build-fuzz/fuzz_$t.log
    echo "fuzz_$t found a problem (exit $rc): input saved in build-fuzz/artifacts/"
    exit 1
  fi
done
echo "fuzz: 2 passed, 0 failed"
