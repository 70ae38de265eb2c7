#!/usr/bin/env bash
# Set everything up, then run the main job on a default input: generate a
# clustered trace (4 streams x 65536 tokens, d = 64) and replay it with 2 MPI
# ranks, exact vs every compression method at the same memory budget (10% of
# exact's), printing the summary table; then the error curves of the
# budgeted methods (kvstream pareto; the quantised caches kivi, qjl and
# turboquant in a second run at 10-50%) as out/demo-pareto.png and .csv: two
# panels, error against memory and error against tokens read per query.
# quest's budget is a read budget (it holds every token), lsh takes none (one
# point per seed at its defaults).
# KVSTREAM_DEMO_METHODS / KVSTREAM_DEMO_BUDGET override the replay's method
# list and budget; KVSTREAM_DEMO_PARETO=0 skips the curves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/build.sh build
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mkdir -p out
mpirun --oversubscribe -np 2 build/kvstream gen --kind clustered --clusters 64 --spread 0.1 --streams 4 \
  --tokens 65536 --dim 64 --queries 256 --seed 1 -o out/demo-trace.h5
METHODS=${KVSTREAM_DEMO_METHODS:-"exact,window,sinks,h2o,tova,snapkv,uniform,balancekv,subgen,subgen:joint=1,name=subgen-joint,window+subgen,kivi,qjl,topk:k=64"}
BUDGET=${KVSTREAM_DEMO_BUDGET:-10%}
mpirun --oversubscribe -np 2 build/kvstream replay out/demo-trace.h5 --methods "$METHODS" --budget "$BUDGET" \
  -o out/demo-results.h5
echo "results: out/demo-results.h5 (layout: docs/RESULTS_FORMAT.md)"
if [ "${KVSTREAM_DEMO_PARETO:-1}" != 0 ]; then
  mpirun --oversubscribe -np 2 build/kvstream pareto out/demo-trace.h5 --methods window,sinks,h2o,tova,snapkv,uniform,balancekv,subgen,quest,lsh \
    --budgets 2.5%,5%,10%,25% --seeds 2 -q -o out/demo-pareto.h5
  # the quantised caches cannot go below ~10% (2-bit KIVI is 3 bits per element
  # with its scales): their own run, at budgets they can hold, in the same figure
  mpirun --oversubscribe -np 2 build/kvstream pareto out/demo-trace.h5 --methods kivi,qjl,turboquant \
    --budgets 10%,25%,50% --seeds 2 -q -o out/demo-pareto-quant.h5
  /usr/bin/python3 analysis/pareto.py out/demo-pareto.h5 out/demo-pareto-quant.h5 -o out/demo-pareto --axis both \
    --title "demo trace (out/demo-trace.h5): clustered, 4 streams x 65,536 tokens, d = 64, 2 ranks"
  echo "error against memory and against reads per query: out/demo-pareto.png, out/demo-pareto.csv (docs/PARETO.md)"
fi
