# Hybrid placement (src/cmd/cmd_placement.c): OpenMP threads bound to fewer CPUs
# than they are get one warning line from rank 0; a placement that gives
# every thread a CPU gets none.  The replay itself succeeds either way.
set(KV_PLACE_SH [=[
out=$("$@" 2>&1); rc=$?
printf '%s\n' "$out"
[ "$rc" -eq 0 ] || { echo "placement: exit status $rc"; exit 1; }
n=$(printf '%s\n' "$out" | grep -c "threads share cores")
[ "$n" -eq "$KV_WANT" ] || { echo "placement: $n warning lines, expected $KV_WANT"; exit 1; }
exit 0
]=])
function(kv_place_test name want threads bind)
  add_test(NAME ${name} COMMAND sh -c "${KV_PLACE_SH}" sh ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 2
           --bind-to ${bind} -x OMP_NUM_THREADS ${KVSTREAM_EXE} replay ${KV_WORK}/core.h5 --methods exact --quiet)
  set_tests_properties(${name} PROPERTIES LABELS "mpi;placement" TIMEOUT 120 FIXTURES_REQUIRED core_trace
                       ENVIRONMENT "${KV_MPI_ENV};OMP_NUM_THREADS=${threads};KV_WANT=${want}")
endfunction()
kv_place_test(placement_bound_warns 1 2 core)
kv_place_test(placement_unbound_quiet 0 2 none)
kv_place_test(placement_one_thread_quiet 0 1 core)
