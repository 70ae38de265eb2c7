# Memory figures (docs/RESULTS_FORMAT.md): memory_bytes is the time-aligned
# peak (over query positions, of the state summed over ranks), with the
# end-of-stream figure, the largest rank's own peak and the process peak RSS
# beside it, under 1..4 ranks.
add_test(NAME memory_peak COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_memory.py ${KVSTREAM_EXE} ${KV_WORK}/memory)
set_tests_properties(memory_peak PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;memory" TIMEOUT 600)
