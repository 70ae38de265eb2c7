# The Slurm job scripts (jobs/) on a real one-node Slurm started by the test
# itself on localhost (tests/slurm_cluster.sh): replay, a job array, strong
# and weak scaling, and the wall-time SIGTERM hook with requeue/resume.
# Needs Debian's slurm-wlm and munge (scripts/deps.sh) and root; it FAILS
# (does not skip) when they are missing. The daemons are stopped by PID on
# every exit path.
add_test(NAME slurm_jobs
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/slurm_jobs.sh ${KVSTREAM_EXE} ${CMAKE_SOURCE_DIR}
                 ${CMAKE_CURRENT_BINARY_DIR}/work/slurm)
set_tests_properties(slurm_jobs PROPERTIES LABELS "slurm" TIMEOUT 900 ENVIRONMENT "${KV_MPI_ENV}"
                     RUN_SERIAL TRUE)
