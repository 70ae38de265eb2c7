#!/usr/bin/env bash
# The barrier, measured (docs/BARRIER.md): `kvstream sweep` on the
# two lower-bound instances, index (d = 8 and 48) over n = 512..8192 and
# packing (d = 4 and 8) over n = 1,024..16,384, probes after the stream
# (--query-at end), eps = 0.1 on the p95 relative error of the probes, window,
# uniform, h2o and SubGen (four templates: the cluster cap searched at two
# join radii with one-key reservoirs carrying values, the budget= rule
# choosing t and the cap for those reservoirs, and the paper's l2 estimator
# with its budget= rule choosing t, s and the cap), under MPI (2 ranks, 1 thread
# each); then analysis/barrier.py draws the figure and the slopes.
#
#   bash scripts/run-barrier.sh [build-dir (default build)] [out-dir (default out/barrier)]
#
# A few minutes on 2 cores.  KVSTREAM_BARRIER_NP sets the rank count (2);
# KVSTREAM_BARRIER_FIGURE=1 also copies the figure to docs/figures/barrier.png.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
OUT=${2:-out/barrier}
[ -x "$BUILD/kvstream" ] || bash scripts/build.sh "$BUILD"
KV="$BUILD/kvstream"
PY=/usr/bin/python3
NP=${KVSTREAM_BARRIER_NP:-2}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
RUN="mpirun --oversubscribe -np $NP"
EPS=0.1
METHODS="window:W=@,uniform:tokens=@,h2o:tokens=@"
METHODS="$METHODS,subgen:delta=0.1,t=1,joint=1,clusters=@,name=subgen-d01"
METHODS="$METHODS,subgen:delta=0.3,t=1,joint=1,clusters=@,name=subgen-d03"
METHODS="$METHODS,subgen:delta=0.1,joint=1,budget=@tok,name=subgen-jb"
METHODS="$METHODS,subgen:budget=@tok,name=subgen-l2"
COMMON=(--eps "$EPS" --queries 64 --seed 1 --seeds 1 --query-at end --methods "$METHODS" --workdir "$OUT")

for d in 8 48; do
  $RUN "$KV" sweep --kind index --n 512,1024,2048,4096,8192 --d "$d" "${COMMON[@]}" -o "$OUT/index-d$d.h5"
done
for d in 4 8; do
  $RUN "$KV" sweep --kind packing --n 1024,2048,4096,8192,16384 --d "$d" "${COMMON[@]}" -o "$OUT/packing-d$d.h5"
done
$PY analysis/barrier.py "$OUT"/index-d*.h5 "$OUT"/packing-d*.h5 -o "$OUT/barrier" | tee "$OUT/slopes.md"
if [ "${KVSTREAM_BARRIER_FIGURE:-0}" = 1 ]; then
  cp "$OUT/barrier.png" docs/figures/barrier.png
  cp "$OUT/barrier.csv" docs/figures/barrier-slopes.csv
fi
