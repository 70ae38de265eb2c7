# shellcheck shell=bash
# kvjob.sh - shared helpers for the kvstream batch scripts in jobs/ (sourced,
# not run). See jobs/README.md.
#
# Settings read from the environment (all optional):
#   KVSTREAM           the kvstream binary (default: $KV_REPO/build/kvstream,
#                      then `kvstream` on PATH)
#   KV_LAUNCHER        srun | mpirun | auto (default auto: `srun --mpi=pmix`
#                      when `srun --mpi=list` offers pmix, else mpirun)
#   KV_SRUN_ARGS       extra srun options, e.g. "--cpu-bind=cores"
#   KV_MPIRUN_ARGS     extra mpirun options (default "--bind-to none")
#   KV_STOP_SIGNAL     signal sent to the job step when the batch shell gets
#                      SIGTERM (default USR1; see kv_run_step)
#   KV_MAX_RESTARTS    requeue at most this many times (default 20)

kv_log() { echo "[kvjob $(date +%H:%M:%S)] $*" >&2; }
kv_die() { kv_log "error: $*"; exit "${KV_DIE_STATUS:-2}"; }

# --- the kvstream binary ----------------------------------------------------
kv_find_kvstream() {
  if [ -n "${KVSTREAM:-}" ]; then
    [ -x "$KVSTREAM" ] || kv_die "KVSTREAM=$KVSTREAM is not an executable file"
  elif [ -n "${KV_REPO:-}" ] && [ -x "$KV_REPO/build/kvstream" ]; then
    KVSTREAM=$KV_REPO/build/kvstream
  elif command -v kvstream >/dev/null 2>&1; then
    KVSTREAM=$(command -v kvstream)
  else
    kv_die "no kvstream binary: set KVSTREAM=/path/to/kvstream or build the repo into ${KV_REPO:-<repo>}/build"
  fi
  export KVSTREAM
}

# `kvstream help` lists --checkpoint once replay can checkpoint and resume
kv_has_checkpoint() {
  if [ -z "${KV_HAS_CHECKPOINT:-}" ]; then
    if "$KVSTREAM" help 2>&1 | grep -q -- --checkpoint; then KV_HAS_CHECKPOINT=1; else KV_HAS_CHECKPOINT=0; fi
  fi
  [ "$KV_HAS_CHECKPOINT" = 1 ]
}

# --- threads and launcher ---------------------------------------------------
# threads per rank: the job's --cpus-per-task (1 when not given); outside
# Slurm OMP_NUM_THREADS or 1
kv_threads() {
  if [ -n "${SLURM_JOB_ID:-}" ]; then echo "${SLURM_CPUS_PER_TASK:-1}"; else echo "${OMP_NUM_THREADS:-1}"; fi
}

kv_pick_launcher() {
  local l=${KV_LAUNCHER:-auto}
  if [ "$l" = auto ]; then
    if [ -n "${SLURM_JOB_ID:-}" ] && command -v srun >/dev/null 2>&1 && srun --mpi=list 2>&1 | grep -qw pmix; then
      l=srun
    else
      l=mpirun
    fi
  fi
  case "$l" in srun|mpirun) ;; *) kv_die "KV_LAUNCHER=$l: use srun, mpirun or auto" ;; esac
  KV_LAUNCHER=$l
}

# kv_launch_cmd RANKS THREADS: sets KV_LAUNCH (an array) to the command prefix
# that starts RANKS MPI ranks with THREADS OpenMP threads (and cores) each
kv_launch_cmd() {
  local ranks=$1 threads=$2
  if [ -z "${KV_LAUNCHER:-}" ] || [ "$KV_LAUNCHER" = auto ]; then kv_pick_launcher; fi
  export OMP_NUM_THREADS=$threads
  if [ "$KV_LAUNCHER" = srun ]; then
    # since Slurm 22.05 srun does not inherit --cpus-per-task from sbatch: pass it
    # shellcheck disable=SC2206
    KV_LAUNCH=(srun --mpi=pmix --ntasks="$ranks" --cpus-per-task="$threads" ${KV_SRUN_ARGS:-})
  else
    # shellcheck disable=SC2206
    KV_LAUNCH=(mpirun -n "$ranks" -x OMP_NUM_THREADS ${KV_MPIRUN_ARGS:---bind-to none})
  fi
}

# --- a job step that survives the wall-time limit --------------------------
# Slurm sends SIGTERM to the batch shell (sbatch --signal=B:TERM@120) some
# time before the limit. Bash runs a trap only between commands, so the step
# runs in the background and the shell waits for it. The trap does not pass
# TERM on as it is: srun and mpirun both treat SIGTERM as "kill the step now",
# while both forward SIGUSR1 to every task, and kvstream replay handles
# SIGUSR1 exactly like SIGTERM (finish the batch, write the checkpoint, exit
# with status 3). So the trap sends KV_STOP_SIGNAL (default USR1) to the
# launcher.
KV_STOP_REQUESTED=0
KV_STEP_PID=
kv_on_term() {
  KV_STOP_REQUESTED=1
  if [ -n "$KV_STEP_PID" ]; then
    kv_log "SIGTERM: forwarding SIG${KV_STOP_SIGNAL:-USR1} to the job step (launcher pid $KV_STEP_PID)"
    kill -s "${KV_STOP_SIGNAL:-USR1}" "$KV_STEP_PID" 2>/dev/null
  else
    kv_log "SIGTERM (no job step running)"
  fi
}
kv_trap_term() { trap kv_on_term TERM; }

# kv_run_step CMD...: run CMD in the background and wait for it, forwarding a
# stop request (see above); returns CMD's exit status
kv_run_step() {
  local rc
  if [ "$KV_STOP_REQUESTED" = 1 ]; then return 3; fi
  "$@" </dev/null &
  KV_STEP_PID=$!
  while :; do
    wait "$KV_STEP_PID"
    rc=$?
    # a status > 128 with the step still alive: the wait was cut short by the trap
    if [ "$rc" -gt 128 ] && kill -0 "$KV_STEP_PID" 2>/dev/null; then continue; fi
    break
  done
  KV_STEP_PID=
  return "$rc"
}

# state of this job as slurmctld sees it (RUNNING, CANCELLED, ...)
kv_job_state() {
  scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2
}

# kv_replay OUT CKPT ARGS...: one `kvstream replay ARGS -o OUT` with the
# job's ranks and threads. With checkpoint support, the replay writes CKPT
# when asked to stop and resumes from CKPT when it exists (a requeued run);
# after a stop (time limit coming) the job requeues itself. Without it, a stop
# just ends the replay (exit 3, results incomplete). Exits the script.
kv_replay() {
  local out=$1 ckpt=$2 rc ranks threads restarts=${SLURM_RESTART_COUNT:-0}
  shift 2
  local args=("$@" -o "$out")
  ranks=${SLURM_NTASKS:-1}
  threads=$(kv_threads)
  if kv_has_checkpoint; then
    args+=(--checkpoint "$ckpt")
    if [ -f "$ckpt" ]; then
      [ -f "$out" ] || kv_die "checkpoint $ckpt exists but its results file $out does not: remove the checkpoint to start over"
      kv_log "resuming from $ckpt (restart $restarts)"
      args+=(--resume "$ckpt")
    fi
  else
    kv_log "this kvstream has no --checkpoint: a stop before the time limit ends the replay without a checkpoint"
  fi
  kv_launch_cmd "$ranks" "$threads"
  kv_log "job ${SLURM_JOB_ID:-none}: $ranks ranks x $threads threads via $KV_LAUNCHER: $KVSTREAM replay ${args[*]}"
  kv_trap_term
  local errlog
  errlog=$(mktemp "${TMPDIR:-/tmp}/kvjob-err.XXXXXX")
  # stderr also goes to a file, to recognise the refusal below
  kv_run_step "${KV_LAUNCH[@]}" "$KVSTREAM" replay "${args[@]}" 2> >(tee "$errlog" >&2; : > "$errlog.done")
  rc=$?
  local t
  for t in $(seq 1 50); do [ -f "$errlog.done" ] && break; sleep 0.1; done
  if [ "$rc" = 2 ] && [ "$KV_STOP_REQUESTED" = 0 ] && grep -q "cannot be checkpointed" "$errlog"; then
    # not every method implements checkpoints yet: run without (no requeue then)
    KV_HAS_CHECKPOINT=0
    local plain=() skip=0 a
    for a in "${args[@]}"; do
      if [ "$skip" = 1 ]; then skip=0; continue; fi
      case "$a" in --checkpoint|--resume) skip=1; continue ;; esac
      plain+=("$a")
    done
    args=("${plain[@]}")
    kv_log "a method cannot be checkpointed: running without --checkpoint (a stop before the time limit ends the replay)"
    kv_run_step "${KV_LAUNCH[@]}" "$KVSTREAM" replay "${args[@]}"
    rc=$?
  fi
  rm -f "$errlog" "$errlog.done"
  if [ "$rc" = 0 ]; then
    rm -f "$ckpt" "$ckpt.tmp"
    kv_log "replay done: $out"
    exit 0
  fi
  if [ "$KV_STOP_REQUESTED" = 1 ]; then
    if [ "$rc" = 3 ] && kv_has_checkpoint && [ -f "$ckpt" ]; then
      local state
      state=$(kv_job_state)
      if [ -z "${SLURM_JOB_ID:-}" ]; then
        kv_log "stopped; checkpoint $ckpt (not under Slurm: run again to resume)"
      elif [ "$state" != RUNNING ]; then
        kv_log "stopped with checkpoint $ckpt; job is $state (cancelled?): not requeued; resubmit to resume"
      elif [ "$restarts" -ge "${KV_MAX_RESTARTS:-20}" ]; then
        kv_log "stopped with checkpoint $ckpt after $restarts restarts (KV_MAX_RESTARTS): not requeued; resubmit to resume"
      elif scontrol requeue "$SLURM_JOB_ID"; then
        kv_log "checkpoint $ckpt written; job $SLURM_JOB_ID requeued (restart $((restarts + 1))) to resume"
        exit 0
      else
        kv_log "scontrol requeue $SLURM_JOB_ID failed; resubmit to resume from $ckpt"
      fi
    else
      kv_log "replay stopped before the time limit (status $rc), no checkpoint: $out is incomplete"
    fi
  fi
  kv_log "replay failed with status $rc"
  exit "$rc"
}

# --- scaling grids -----------------------------------------------------------
# kv_grid_points: the (ranks, threads) pairs of RANKS x THREADS that fit in
# the allocation (ranks*threads <= KV_MAX_CPUS, default the job's tasks times
# cpus-per-task), printed as "R T" lines
kv_grid_points() {
  local max=${KV_MAX_CPUS:-$(( ${SLURM_NTASKS:-1} * ${SLURM_CPUS_PER_TASK:-1} ))} r t
  for r in ${RANKS:-1 2 4 8}; do
    for t in ${THREADS:-1 2}; do
      if [ $(( r * t )) -le "$max" ]; then echo "$r $t"; else kv_log "skipping ${r}x${t}: more than the $max CPUs allocated"; fi
    done
  done
}

# kv_drop_opt OPT WORDS...: WORDS without "OPT VALUE"
kv_drop_opt() {
  local opt=$1 skip=0 w out=()
  shift
  for w in "$@"; do
    if [ "$skip" = 1 ]; then skip=0; continue; fi
    if [ "$w" = "$opt" ]; then skip=1; continue; fi
    out+=("$w")
  done
  echo "${out[@]}"
}

# kv_python: Debian's python3 with numpy/h5py/matplotlib (not the first on PATH)
kv_python() { "${KV_PYTHON:-/usr/bin/python3}" "$@"; }

# kv_scaling strong|weak: the body of strong-scaling.sbatch / weak-scaling.sbatch
#   strong: one trace (TRACE, or generated from GEN into OUTDIR), replayed at
#           every grid point
#   weak:   per point a trace of BASE_TOKENS * ranks * threads tokens generated
#           from GEN (whose --tokens is ignored), then replayed
# then analysis/scaling.py writes OUTDIR/scaling.{md,csv,png}
kv_scaling() {
  local mode=$1 outdir=${OUTDIR:-kv-$1-${SLURM_JOB_ID:-$$}} r t rep trace out rc pts tokens failed=0
  local gen=${GEN:---kind clustered --clusters 64 --streams 4 --tokens 262144 --dim 64 --queries 256 --seed 1}
  local reps=${REPEATS:-1}
  kv_find_kvstream
  mkdir -p "$outdir" || kv_die "cannot create $outdir"
  kv_trap_term
  pts=$(kv_grid_points)
  [ -n "$pts" ] || kv_die "no grid point fits: RANKS='${RANKS:-1 2 4 8}' THREADS='${THREADS:-1 2}'"
  kv_log "$mode scaling into $outdir; points (ranks threads): $(tr '\n' ',' <<<"$pts" | sed 's/,$//')"
  if [ "$mode" = strong ]; then
    trace=${TRACE:-}
    if [ -z "$trace" ]; then
      trace=$outdir/trace.h5
      kv_launch_cmd "${SLURM_NTASKS:-1}" 1
      # shellcheck disable=SC2086
      [ -f "$trace" ] || kv_run_step "${KV_LAUNCH[@]}" "$KVSTREAM" gen $gen -o "$trace" || kv_die "gen failed"
    fi
    [ -f "$trace" ] || kv_die "trace $trace not found"
  fi
  while read -r r t; do
    [ "$KV_STOP_REQUESTED" = 1 ] && break
    if [ "$mode" = weak ]; then
      tokens=$(( ${BASE_TOKENS:-65536} * r * t ))
      trace=$outdir/trace-r${r}_t${t}.h5
      kv_launch_cmd "$r" 1
      # shellcheck disable=SC2086,SC2046
      kv_run_step "${KV_LAUNCH[@]}" "$KVSTREAM" gen $(kv_drop_opt --tokens $gen) --tokens "$tokens" -o "$trace" ||
        { kv_log "gen for ${r}x${t} failed"; failed=$((failed + 1)); continue; }
    fi
    for rep in $(seq 1 "$reps"); do
      [ "$KV_STOP_REQUESTED" = 1 ] && break
      out=$outdir/r${r}_t${t}$([ "$reps" -gt 1 ] && echo "_rep$rep").h5
      kv_launch_cmd "$r" "$t"
      kv_log "point ${r} ranks x ${t} threads -> $out"
      # shellcheck disable=SC2086
      kv_run_step "${KV_LAUNCH[@]}" "$KVSTREAM" replay "$trace" --methods "${METHODS:-exact}" --quiet ${EXTRA:-} -o "$out"
      rc=$?
      [ "$rc" = 0 ] || { kv_log "replay at ${r}x${t} failed (status $rc)"; rm -f "$out"; failed=$((failed + 1)); }
    done
    if [ "$mode" = weak ] && [ "${KEEP_TRACES:-0}" != 1 ]; then rm -f "$trace"; fi
  done <<<"$pts"
  [ "$KV_STOP_REQUESTED" = 1 ] && kv_log "stopped before the time limit: summarising the points done"
  kv_python "$KV_REPO/analysis/scaling.py" "$outdir" --mode "$mode" --out "$outdir/scaling" || kv_die "scaling.py failed"
  kv_log "summary: $outdir/scaling.md, scaling.csv, scaling.png"
  if [ "$failed" -gt 0 ] || [ "$KV_STOP_REQUESTED" = 1 ]; then
    kv_log "$failed point(s) failed$([ "$KV_STOP_REQUESTED" = 1 ] && echo ", stopped before the time limit")"
    exit 1
  fi
}
