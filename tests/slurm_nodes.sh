#!/usr/bin/env bash
# Two Slurm nodes on one machine: tests/check_nodes.py --slurm on a
# throw-away multiple-slurmd cluster (kvnode1, kvnode2; tests/slurm_cluster.sh).
#
# usage: slurm_nodes.sh KVSTREAM REPO WORKDIR
#
# Starts munged, slurmctld and one slurmd per node, runs the check (a 2+2
# replay by `salloc -N 2 mpiexec`: map, BTL per pair, bitwise equal to the
# shared-memory run, vader-only fails, kill -9 ends it) and stops the daemons
# it started by PID on every exit path. Missing Slurm/munge binaries are a
# FAILURE, not a skip (CI installs them).
set -uo pipefail
KVSTREAM=$(readlink -f "$1")
REPO=$(cd "$2" && pwd)
WORK=$3
fail() { echo "FAIL: $*"; exit 1; }

# shellcheck source=tests/slurm_cluster.sh
source "$REPO/tests/slurm_cluster.sh"
kv_slurm_prepare "$WORK" munged mungekey slurmctld slurmd salloc srun squeue sinfo || exit 1
WORK=$KV_WORK CLUSTER=$KV_CLUSTER
cleanup() {
  local rc=$?
  kv_slurm_stop "$CLUSTER"
  if [ "$rc" != 0 ]; then
    mkdir -p "$WORK/cluster-logs" && cp -r "$CLUSTER"/log "$CLUSTER"/slurm.conf "$WORK/cluster-logs/" 2>/dev/null
    tail -n 30 "$CLUSTER"/log/*.log 2>/dev/null
  fi
  rm -rf "$CLUSTER"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

kv_slurm_start "$CLUSTER" 2 || fail "could not start the two-node Slurm cluster"
export SLURM_CONF=$CLUSTER/slurm.conf
echo "ok: cluster up: $(sinfo -h -N -o '%N %T' | tr '\n' ' ')"
PYTHONPATH=$REPO/tests /usr/bin/python3 "$REPO/tests/check_nodes.py" "$KVSTREAM" "$WORK" --slurm
