#!/usr/bin/env bash
# Set everything up, then run the main job on a default input: generate a
# clustered trace (4 streams x 65536 tokens, d = 64) and replay it with 2 MPI
# ranks, exact vs the other methods, printing the summary table.
# KVSTREAM_DEMO_METHODS overrides the method list.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/build.sh build
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mkdir -p out
mpirun --oversubscribe -np 2 build/kvstream gen --kind clustered --clusters 64 --spread 0.1 --streams 4 \
  --tokens 65536 --dim 64 --queries 256 --seed 1 -o out/demo-trace.h5
METHODS=${KVSTREAM_DEMO_METHODS:-"exact,subgen:delta=2,t=16,s=1024,window:W=4096,sinks:S=64,W=4096,h2o:tokens=8192,recent=2048,uniform:tokens=4096,window+subgen:W=1024,delta=2,t=16,s=1024"}
mpirun --oversubscribe -np 2 build/kvstream replay out/demo-trace.h5 --methods "${METHODS:-exact}" \
  -o out/demo-results.h5
echo "results: out/demo-results.h5 (layout: docs/RESULTS_FORMAT.md)"
