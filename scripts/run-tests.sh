#!/usr/bin/env bash
# Set everything up, then build and run the whole test suite twice: a
# Release build, and an ASan+UBSan build (KVSTREAM_SANITIZE=ON); then
# valgrind memcheck on a 2-rank replay and a short libFuzzer smoke run.
# KVSTREAM_SKIP_SANITIZE=1 skips the sanitizer, valgrind and fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bash scripts/build.sh build
(cd build && ctest --output-on-failure --timeout 1200)
if [ "${KVSTREAM_SKIP_SANITIZE:-0}" != 1 ]; then
  # -march=native off: sanitizer runtimes and the CI machine need not match
  bash scripts/build.sh build-sanitize -DKVSTREAM_SANITIZE=ON -DKVSTREAM_NATIVE=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
  (cd build-sanitize && ctest --output-on-failure --timeout 2400 -LE nosanitize)
  bash scripts/run-valgrind.sh
  bash scripts/run-fuzz.sh --ci "${KVSTREAM_FUZZ_SECONDS:-30}"
fi
