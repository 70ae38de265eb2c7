#!/usr/bin/env bash
# Set everything up, then build and run the whole test suite three times: a
# Release build tuned for this CPU (-march=native), a portable Release build
# (-DKVSTREAM_NATIVE=OFF: baseline x86-64 code, so a tolerance that only
# holds on one CPU's rounding fails here rather than on a user's machine),
# and an ASan+UBSan build; then valgrind memcheck on 2-rank replays and a
# short libFuzzer smoke run.
# KVSTREAM_SKIP_SANITIZE=1 skips the sanitizer, valgrind and fuzz passes;
# KVSTREAM_SKIP_PORTABLE=1 skips the portable pass.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
t0=$SECONDS
stage() { echo "== run-tests: $1 ($((SECONDS - t0)) s so far)"; }
stage "Release, native"
bash scripts/build.sh build
(cd build && ctest --output-on-failure --timeout 1200)
if [ "${KVSTREAM_SKIP_PORTABLE:-0}" != 1 ]; then
  stage "Release, portable (-DKVSTREAM_NATIVE=OFF)"
  bash scripts/build.sh build-portable -DKVSTREAM_NATIVE=OFF
  (cd build-portable && ctest --output-on-failure --timeout 1200)
fi
if [ "${KVSTREAM_SKIP_SANITIZE:-0}" != 1 ]; then
  stage "ASan+UBSan"
  # -march=native off: sanitizer runtimes and the CI machine need not match
  bash scripts/build.sh build-sanitize -DKVSTREAM_SANITIZE=ON -DKVSTREAM_NATIVE=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
  (cd build-sanitize && ctest --output-on-failure --timeout 2400 -LE nosanitize)
  stage "valgrind"
  bash scripts/run-valgrind.sh
  stage "fuzz smoke"
  bash scripts/run-fuzz.sh --ci "${KVSTREAM_FUZZ_SECONDS:-30}"
fi
stage "done"
