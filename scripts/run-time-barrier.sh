#!/usr/bin/env bash
# The time barrier, measured (docs/BARRIER.md, "Time"): `kvstream sweep
# --axis reads` on the needle instance (d = 32, n = 2^10 .. 2^16, 64 probes
# after the stream, eps = 0.1 on the p95 relative error of the probes) for
# the non-adaptive readers window and uniform and the adaptive ones quest
# (pages searched) and lsh (tables searched, K = 8), under MPI (2 ranks, 1
# thread each); then analysis/time_barrier.py draws least reads per query
# and the memory held at that answer against n, with their log-log slopes.
#
#   bash scripts/run-time-barrier.sh [build-dir (default build)] [out-dir (default out/time-barrier)]
#
# Needs a build whose replay counts reads (read_tokens_per_query).
# KVSTREAM_TIME_N=1024,2048,... sets the grid of n (default 2^10 .. 2^16).  Some
# minutes on 2 cores.  KVSTREAM_BARRIER_NP sets the rank count (2);
# KVSTREAM_BARRIER_FIGURE=1 also copies the figure and slopes to docs/figures/.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
OUT=${2:-out/time-barrier}
[ -x "$BUILD/kvstream" ] || bash scripts/build.sh "$BUILD"
KV="$BUILD/kvstream"
PY=/usr/bin/python3
NP=${KVSTREAM_BARRIER_NP:-2}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
METHODS="window:W=@,uniform:tokens=@,quest:pages=@,lsh:K=8,L=@,seed=1"
mpirun --oversubscribe -np "$NP" "$KV" sweep --kind needle --n ${KVSTREAM_TIME_N:-1024,2048,4096,8192,16384,32768,65536} --d 32 \
  --eps 0.1 --queries 64 --seed 1 --query-at end --axis reads --methods "$METHODS" --workdir "$OUT" \
  -o "$OUT/needle-d32.h5"
$PY analysis/time_barrier.py "$OUT/needle-d32.h5" -o "$OUT/time-barrier" | tee "$OUT/slopes.md"
if [ "${KVSTREAM_BARRIER_FIGURE:-0}" = 1 ]; then
  cp "$OUT/time-barrier.png" docs/figures/time-barrier.png
  cp "$OUT/time-barrier.csv" docs/figures/time-barrier-slopes.csv
fi
