#!/usr/bin/env bash
# valgrind memcheck on a small 2-rank replay (every method, checkpoint and
# resume included when the methods support it).  Uses a portable build
# (-DKVSTREAM_NATIVE=OFF): valgrind cannot decode AVX-512.  Suppressions:
# Open MPI's own file plus tests/valgrind-mpi.supp (MPI runtime frames only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh build-portable -DKVSTREAM_NATIVE=OFF >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
work=build-portable/valgrind
mkdir -p "$work"
build-portable/kvstream gen --kind clustered --streams 2 --tokens 2000 --dim 16 --queries 20 --chunk 256 \
  -o "$work/trace.h5" >/dev/null
VG=(valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite
    --suppressions=/usr/share/openmpi/openmpi-valgrind.supp --suppressions=tests/valgrind-mpi.supp)
# every method's small conformance instance, by the semantics it answers
specs() { build-portable/kvstream methods --specs | awk -v sem="semantics=$1" '!/^#/ && $5 == sem { printf "%s%s", s, $3; s = "," }'; }
METHODS=$(specs full)
UNMASKED=$(specs window-unmasked)
run() { mpirun --oversubscribe -np 2 "${VG[@]}" build-portable/kvstream "$@" >"$work/log" 2>&1 || { cat "$work/log"; echo "valgrind: FAILED: $*"; exit 1; }; }
run replay "$work/trace.h5" --methods "$METHODS" --save-outputs --quiet -o "$work/r.h5"
run replay "$work/trace.h5" --methods "exact,$UNMASKED" --semantics window-unmasked-values --window 64 --quiet
# interrupted after 10 queries (test hook), checkpointed, resumed
rm -f "$work/c.ckpt"
rc=0
mpirun --oversubscribe -np 2 "${VG[@]}" build-portable/kvstream replay --stop-after 10 \
  "$work/trace.h5" --methods "$METHODS" --batch 5 --quiet -o "$work/c.h5" --checkpoint "$work/c.ckpt" >"$work/log" 2>&1 || rc=$?
# 3 = stopped with a checkpoint; valgrind's own errors would give 9
if [ "$rc" -ne 3 ] || ! grep -q "checkpoint written" "$work/log"; then
  cat "$work/log"; echo "valgrind: FAILED: interrupted run (exit $rc)"; exit 1
fi
run replay "$work/trace.h5" --methods "$METHODS" --batch 5 --quiet -o "$work/c.h5" --checkpoint "$work/c.ckpt" --resume "$work/c.ckpt"
echo "valgrind: 4 passed, 0 failed"
