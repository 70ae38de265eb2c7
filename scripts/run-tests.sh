#!/usr/bin/env bash
# Set everything up, then build and test (docs/TESTING.md says which tests
# each pass runs and why):
#   native     Release tuned for this CPU (-march=native): every test
#   portable   Release for baseline x86-64 (-DKVSTREAM_NATIVE=OFF): the tests
#              labelled "numerics", whose results depend on float rounding,
#              so a tolerance that only holds on one CPU fails here rather
#              than on a user's machine
#   sanitize   ASan+UBSan: tier0 and tier1 but the "nosanitize" ones
#   valgrind   memcheck on 2-rank replays (scripts/run-valgrind.sh)
#   fuzz       a short libFuzzer smoke run (scripts/run-fuzz.sh --ci)
#
# usage: scripts/run-tests.sh [--quick] [-j N]
#   --quick  the native build and tier0 only (unit, layers, command line):
#            for developers, about two minutes with the build on 2 cores
#   -j N     tests run side by side (default: the CPU count); MPI tests
#            take both cores (PROCESSORS), the Slurm ones run alone
# KVSTREAM_SKIP_SANITIZE=1 skips the sanitizer, valgrind and fuzz passes;
# KVSTREAM_SKIP_PORTABLE=1 skips the portable pass.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
jobs=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    -j) jobs=${2:?-j needs a number}; shift ;;
    -j*) jobs=${1#-j} ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "run-tests.sh: unknown option '$1' (usage: scripts/run-tests.sh [--quick] [-j N])" >&2; exit 2 ;;
  esac
  shift
done
bash scripts/deps.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
t0=$SECONDS
stage() { echo "== run-tests: $1 ($((SECONDS - t0)) s so far)"; }
ctest_in() { local dir=$1; shift; (cd "$dir" && ctest --output-on-failure --timeout 1200 -j"$jobs" "$@"); }
stage "Release, native"
bash scripts/build.sh build
if [ "$quick" = 1 ]; then
  ctest_in build -L '^tier0$'
  stage "done (--quick: tier0 only)"
  exit 0
fi
ctest_in build
if [ "${KVSTREAM_SKIP_PORTABLE:-0}" != 1 ]; then
  stage "Release, portable (-DKVSTREAM_NATIVE=OFF): tests labelled numerics"
  bash scripts/build.sh build-portable -DKVSTREAM_NATIVE=OFF
  ctest_in build-portable -L '^numerics$'
fi
if [ "${KVSTREAM_SKIP_SANITIZE:-0}" != 1 ]; then
  stage "ASan+UBSan"
  # -march=native off: sanitizer runtimes and the CI machine need not match
  bash scripts/build.sh build-sanitize -DKVSTREAM_SANITIZE=ON -DKVSTREAM_NATIVE=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
  # not tier2 (Slurm, transports, analysis: launchers and scripts ASan does not see) nor nosanitize
  ctest_in build-sanitize --timeout 2400 -LE '^(tier2|nosanitize)$'
  stage "valgrind"
  bash scripts/run-valgrind.sh
  stage "fuzz smoke"
  bash scripts/run-fuzz.sh --ci "${KVSTREAM_FUZZ_SECONDS:-30}"
fi
stage "done"
