#!/usr/bin/env bash
# The job scripts in jobs/ on a real (one-node, localhost) Slurm.
#
# usage: slurm_jobs.sh KVSTREAM REPO WORKDIR
#
# Starts munged, slurmctld and slurmd (tests/slurm_cluster.sh; private key,
# ports and state in a temporary directory), submits with sbatch, waits for
# each job (bounded), checks the results files with tests/slurm_check.py, and
# stops the daemons it started by PID on every exit path (trap EXIT). Missing
# munge/Slurm binaries are a FAILURE, not a skip (CI installs them).
#
# Jobs (submitted from WORKDIR, so the scripts must find the repo themselves):
#  1. replay.sbatch, arguments TRACE METHODS OUT --save-outputs, 2 ranks x 1
#     thread, default launcher (srun --mpi=pmix here), default log name
#     kv-replay-JOBID.out: exact rel_error all 0, each method's memory <
#     exact's, ranks/threads attributes.
#  2. replay.sbatch, parameters from TRACE/METHODS/OUT/EXTRA, KV_LAUNCHER=mpirun,
#     1 rank x 2 threads (-c 2): threads attribute 2 (OMP_NUM_THREADS from
#     SLURM_CPUS_PER_TASK), same checks.
#  3. sweep.sbatch as a 3-task array (--array=0-2, SPECS list): task i's file
#     holds exact + spec i, logs kv-sweep-A_a.out, no checkpoints left.
#  4. strong-scaling.sbatch (RANKS="1 2" THREADS="1 2" on 2 CPUs: points 1x1,
#     2x1, 1x2) and 5. weak-scaling.sbatch (BASE_TOKENS per core): one file
#     per point with the right ranks/threads/tokens, scaling.csv with those
#     points and their wall_seconds.
#  6. wall-time hook with checkpoints: a long replay.sbatch gets SIGTERM in its
#     batch shell (scancel --batch --signal=TERM, what --signal=B:TERM@120
#     does); the trap forwards SIGUSR1 to the step, the replay writes its
#     checkpoint and exits 3, the job requeues itself, resumes (Slurm delays a
#     requeued job ~2 min; the test moves its start time to now) and finishes:
#     results bitwise equal to an uninterrupted replay, Restarts=1.
#  7. wall-time hook without checkpoint support (KVSTREAM = a wrapper whose
#     `help` hides --checkpoint), launcher mpirun: SIGTERM is forwarded, the
#     replay stops cleanly (status 3) within seconds, no requeue, job FAILED
#     with 3.
# Also (2b) a kvstream that refuses --checkpoint for a method: the job falls
# back to a replay without checkpoints and completes.
set -uo pipefail
KVSTREAM=$(readlink -f "$1")
REPO=$(cd "$2" && pwd)
WORK=$3
PY=/usr/bin/python3
CHECK="$PY $REPO/tests/slurm_check.py"
T0=$(date +%s)

fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }

# shellcheck source=tests/slurm_cluster.sh
source "$REPO/tests/slurm_cluster.sh"
kv_slurm_prepare "$WORK" munged mungekey slurmctld slurmd sbatch squeue scontrol scancel sinfo srun || exit 1
WORK=$KV_WORK CLUSTER=$KV_CLUSTER
cleanup() {
  local rc=$?
  kv_slurm_stop "$CLUSTER"
  if [ "$rc" != 0 ]; then
    echo "--- job logs ---"
    for f in "$WORK"/*.out; do [ -f "$f" ] && { echo "== $f"; tail -n 40 "$f"; }; done
    echo "--- daemon logs (kept in $WORK/cluster-logs) ---"
    mkdir -p "$WORK/cluster-logs" && cp -r "$CLUSTER"/log "$CLUSTER"/*.out "$CLUSTER"/slurm.conf "$WORK/cluster-logs/" 2>/dev/null
    tail -n 30 "$CLUSTER"/log/*.log 2>/dev/null
  fi
  rm -rf "$CLUSTER"
  echo "slurm test: $(( $(date +%s) - T0 )) s, exit $rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

kv_slurm_start "$CLUSTER" || fail "could not start the Slurm cluster"
export SLURM_CONF=$CLUSTER/slurm.conf
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export KVSTREAM
unset KV_REPO KV_LAUNCHER TRACE METHODS OUT EXTRA CKPT
ok "cluster up: $(sinfo -h -N -o '%N %T cpus=%c mem=%m')"
cd "$WORK" || fail "cd $WORK"

# --- helpers -----------------------------------------------------------------
job_field() { scontrol show job -o "$1" 2>/dev/null | grep -o "$2=[^ ]*" | cut -d= -f2 | sort -u | tr '\n' ' ' | sed 's/ $//'; }
# wait_done JOBID SECONDS: until every task of JOBID is in a final state
wait_done() {
  local j=$1 limit=$2 t st
  for t in $(seq 1 $(( limit * 2 ))); do
    st=$(job_field "$j" JobState)
    if [ -n "$st" ] && ! grep -Eq 'PENDING|RUNNING|CONFIGURING|COMPLETING|REQUEUED|SUSPENDED' <<<"$st"; then
      echo "$st"; return 0
    fi
    sleep 0.5
  done
  echo "TIMEOUT($st)"
  return 1
}
expect_completed() {
  local j=$1 what=$2 st
  st=$(wait_done "$j" "${3:-240}") || fail "$what (job $j) not done in time: $st"
  [ "$st" = COMPLETED ] || fail "$what (job $j) ended $st (exit $(job_field "$j" ExitCode))"
  ok "$what: job $j COMPLETED"
}
submit() { sbatch --parsable "$@" | cut -d';' -f1; }
N=$(nproc)
[ "$N" -ge 2 ] || fail "the tests need 2 CPUs (nproc = $N)"

# --- traces -----------------------------------------------------------------
TRACE=$WORK/small.h5
mpirun -n 1 "$KVSTREAM" gen --kind clustered --clusters 8 --spread 0.3 --streams 2 --tokens 4000 --dim 16 \
  --queries 48 --chunk 512 --seed 5 -o "$TRACE" >/dev/null || fail "gen small"
LONG=$WORK/long.h5
# The long replay must still be running when the test signals it (the first
# progress line comes after about a second): 12,000 query positions answered
# 4 at a time, each batch one pass over the prefix for exact and one for the
# top-k oracle, about 7 s on 2 cores (3,000 in batches of 16 took 2 s, then
# 1.1 s once topk's batch got faster, and the job ended before the signal).
LONGM="exact,topk:k=8"
mpirun -n 1 "$KVSTREAM" gen --kind gaussian --streams 2 --tokens 80000 --dim 32 --queries 12000 --seed 6 \
  -o "$LONG" >/dev/null || fail "gen long"

# --- 1-5: submit all; they share the node's 2 CPUs -------------------------
M1="window:W=64,uniform:tokens=256"
J1=$(submit -n 2 -c 1 -t 10 "$REPO/jobs/replay.sbatch" "$TRACE" "exact,$M1" "$WORK/replay1.h5" --save-outputs) ||
  fail "sbatch replay.sbatch"
J2=$(TRACE=$TRACE METHODS="sinks:S=4,W=64" OUT=$WORK/replay2.h5 EXTRA="--batch 8 --seed 3" KV_LAUNCHER=mpirun \
     submit -n 1 -c 2 -t 10 -o "$WORK/replay2-%j.out" "$REPO/jobs/replay.sbatch") || fail "sbatch replay.sbatch (env)"
SPECS=("window:W=32" "window:W=256" "uniform:tokens=128")
J3=$(TRACE=$TRACE SPECS="${SPECS[*]}" OUTDIR=$WORK/sweep submit --array=0-2 -n 1 -c 1 -t 10 "$REPO/jobs/sweep.sbatch") ||
  fail "sbatch sweep.sbatch"
J4=$(TRACE=$TRACE METHODS=exact RANKS="1 2" THREADS="1 2" OUTDIR=$WORK/strong \
     submit -n 2 -c 1 -t 10 -o "$WORK/strong-%j.out" "$REPO/jobs/strong-scaling.sbatch") || fail "sbatch strong-scaling"
J5=$(BASE_TOKENS=3000 GEN="--kind gaussian --streams 1 --dim 16 --queries 16 --tokens 99 --seed 2" RANKS="1 2" THREADS="1 2" \
     OUTDIR=$WORK/weak submit -n 2 -c 1 -t 10 -o "$WORK/weak-%j.out" "$REPO/jobs/weak-scaling.sbatch") ||
  fail "sbatch weak-scaling"
# a kvstream that refuses --checkpoint for a method (as for methods without
# checkpoint support): the job falls back to a plain replay
cat > "$WORK/kvstream-refuse" <<EOF
#!/bin/bash
for a in "\$@"; do
  if [ "\$a" = --checkpoint ]; then
    echo "kvstream: error: --checkpoint/--resume: method 'x' cannot be checkpointed" >&2; exit 2
  fi
done
exec "$KVSTREAM" "\$@"
EOF
chmod +x "$WORK/kvstream-refuse"
J2B=$(KVSTREAM=$WORK/kvstream-refuse submit -n 1 -c 1 -t 10 "$REPO/jobs/replay.sbatch" "$TRACE" "window:W=128" \
      "$WORK/refuse.h5") || fail "sbatch replay.sbatch (refused checkpoint)"
ok "submitted replay $J1, replay(env, mpirun) $J2, refused-checkpoint $J2B, sweep array $J3, strong $J4, weak $J5"

expect_completed "$J1" "replay.sbatch (args, srun)"
[ -f "$WORK/kv-replay-$J1.out" ] || fail "default log kv-replay-$J1.out missing"
grep -q "via srun" "$WORK/kv-replay-$J1.out" || fail "job 1 did not use srun: $(cat "$WORK/kv-replay-$J1.out")"
$CHECK replay "$WORK/replay1.h5" 2 1 window:W=64 uniform:tokens=256 || fail "job 1 results"
$PY - "$WORK/replay1.h5" <<'EOF' || fail "job 1 outputs"
import sys, h5py
with h5py.File(sys.argv[1]) as f:
    for g in f["methods"]:
        o = f["methods"][g]["outputs"]
        assert o.shape == (f.attrs["streams"], f.attrs["queries"], f.attrs["dv"]), o.shape
print("ok: --save-outputs passed through: outputs [S, m, dv] for every method")
EOF

expect_completed "$J2" "replay.sbatch (environment, mpirun)"
grep -q "via mpirun" "$WORK/replay2-$J2.out" || fail "job 2 did not use mpirun"
grep -q -- "--batch 8 --seed 3" "$WORK/replay2-$J2.out" || fail "job 2: EXTRA not passed"
$CHECK replay "$WORK/replay2.h5" 1 2 sinks:S=4,W=64 || fail "job 2 results"

expect_completed "$J2B" "replay.sbatch (a method without checkpoints)"
grep -q "running without --checkpoint" "$WORK/kv-replay-$J2B.out" || fail "job $J2B: no fallback message"
$CHECK replay "$WORK/refuse.h5" 1 1 window:W=128 || fail "job $J2B results"

expect_completed "$J3" "sweep.sbatch array (3 tasks)"
for i in 0 1 2; do [ -f "$WORK/kv-sweep-${J3}_$i.out" ] || fail "array log kv-sweep-${J3}_$i.out missing"; done
$CHECK sweep "$WORK/sweep" "${SPECS[@]}" || fail "sweep results"

expect_completed "$J4" "strong-scaling.sbatch"
$CHECK scaling "$WORK/strong" - 1:1 1:2 2:1 || fail "strong scaling results"
expect_completed "$J5" "weak-scaling.sbatch"
$CHECK scaling "$WORK/weak" 3000 1:1 1:2 2:1 || fail "weak scaling results"
ls "$WORK"/weak/trace-*.h5 >/dev/null 2>&1 && fail "weak scaling left its traces (KEEP_TRACES unset)"

# --- 6/7: the wall-time hook ------------------------------------------------
# wait_progress LOG: until the replay prints a progress line (signal handlers are up)
wait_progress() {
  local t
  for t in $(seq 1 120); do grep -q '^replay: ' "$1" 2>/dev/null && return 0; sleep 0.25; done
  return 1
}

if "$KVSTREAM" help 2>&1 | grep -q -- --checkpoint; then
  J6=$(submit -n 2 -c 1 -t 10 "$REPO/jobs/replay.sbatch" "$LONG" "$LONGM" "$WORK/long-res.h5" --save-outputs --batch 4) ||
    fail "sbatch long replay"
  LOG6=$WORK/kv-replay-$J6.out
  wait_progress "$LOG6" || fail "long replay (job $J6) shows no progress: $(cat "$LOG6" 2>/dev/null)"
  scancel --batch --signal=TERM "$J6" || fail "scancel --batch --signal=TERM"
  ok "SIGTERM sent to the batch shell of job $J6"
  for t in $(seq 1 120); do
    [ "$(job_field "$J6" Restarts)" = 1 ] && [ "$(job_field "$J6" JobState)" = PENDING ] && break
    sleep 0.5
  done
  [ "$(job_field "$J6" Restarts)" = 1 ] || fail "job $J6 not requeued: $(job_field "$J6" JobState) $(cat "$LOG6")"
  grep -q "forwarding SIGUSR1 to the job step" "$LOG6" || fail "trap did not forward the signal"
  grep -q "checkpoint written to" "$LOG6" || fail "no checkpoint written"
  grep -q "requeued (restart 1)" "$LOG6" || fail "no requeue message"
  ok "job $J6 stopped with a checkpoint and requeued itself ($(job_field "$J6" Reason))"
  # Slurm makes a requeued job eligible only after a delay (~2 min): skip it,
  # but not in the same second as the requeue (the old instance's revoked
  # credential, second resolution, would make the new start fail)
  sleep 3
  scontrol update JobId="$J6" StartTime=now || fail "scontrol update StartTime"
  expect_completed "$J6" "requeued replay" 240
  grep -q "resuming from $WORK/long-res.ckpt (restart 1)" "$LOG6" || fail "requeued run did not resume: $(cat "$LOG6")"
  [ -f "$WORK/long-res.ckpt" ] && fail "checkpoint left after the finished replay"
  OMP_NUM_THREADS=1 mpirun --oversubscribe -n 2 "$KVSTREAM" replay "$LONG" --methods "$LONGM" --save-outputs --batch 4 \
    --quiet -o "$WORK/long-direct.h5" >/dev/null || fail "uninterrupted reference replay"
  $CHECK same "$WORK/long-res.h5" "$WORK/long-direct.h5" || fail "resumed results differ"
  ok "interrupted, requeued and resumed replay equals the uninterrupted one"
else
  echo "note: this kvstream has no --checkpoint: requeue-and-resume not tested"
fi

# 7: no checkpoint support (a kvstream whose help hides --checkpoint)
cat > "$WORK/kvstream-nockpt" <<EOF
#!/bin/bash
if [ "\${1:-}" = help ]; then "$KVSTREAM" help 2>&1 | grep -v -- --checkpoint; exit 0; fi
exec "$KVSTREAM" "\$@"
EOF
chmod +x "$WORK/kvstream-nockpt"
J7=$(KVSTREAM=$WORK/kvstream-nockpt KV_LAUNCHER=mpirun submit -n 2 -c 1 -t 10 "$REPO/jobs/replay.sbatch" "$LONG" "$LONGM" "$WORK/nockpt.h5" --batch 4) ||
  fail "sbatch nockpt replay"
LOG7=$WORK/kv-replay-$J7.out
wait_progress "$LOG7" || fail "replay (job $J7) shows no progress: $(cat "$LOG7" 2>/dev/null)"
TS=$(date +%s)
scancel --batch --signal=TERM "$J7" || fail "scancel --batch --signal=TERM"
st=$(wait_done "$J7" 60) || fail "job $J7 did not end after SIGTERM: $st"
TE=$(date +%s)
{ [ "$st" = FAILED ] && [ "$(job_field "$J7" ExitCode)" = 3:0 ]; } || fail "job $J7: $st exit $(job_field "$J7" ExitCode), expected FAILED 3:0"
[ "$(job_field "$J7" Restarts)" = 0 ] || fail "job $J7 was requeued without checkpoint support"
grep -q "no --checkpoint" "$LOG7" || fail "job $J7: no note about missing checkpoint support"
grep -q "forwarding SIGUSR1 to the job step" "$LOG7" || fail "job $J7: trap did not forward"
grep -q "stopped by signal 10" "$LOG7" || fail "job $J7: replay did not stop gracefully: $(cat "$LOG7")"
grep -q "no checkpoint: .* is incomplete" "$LOG7" || fail "job $J7: no final message"
grep -q "via mpirun" "$LOG7" || fail "job $J7 did not use mpirun"
grep -q "tasks .*: Killed" "$LOG7" && fail "job $J7 was killed, not stopped: $(cat "$LOG7")"
ok "without checkpoints: SIGTERM forwarded, replay stopped cleanly in $(( TE - TS )) s, job FAILED 3:0, not requeued"

[ -z "$(squeue -h)" ] || fail "jobs left in the queue: $(squeue -h)"
echo "slurm_jobs: all checks passed"
