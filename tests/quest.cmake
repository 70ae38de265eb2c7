# quest: Quest's page selection against a brute force at 1..3 emulated
# ranks, exact with every page, its read counts; the needle instance and the
# P-invariance of quest and lsh under mpirun.
kv_unit_test(test_quest "${CMAKE_CURRENT_SOURCE_DIR}/test_quest.c;${CMAKE_CURRENT_SOURCE_DIR}/emu.c" baselines)
add_test(NAME needle_quest_np COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_needle.py ${KVSTREAM_EXE}
         ${KV_WORK}/needle)
set_tests_properties(needle_quest_np PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;sweep" TIMEOUT 600)
# sweep --axis reads on needle (skipped when the replay does not count reads)
add_test(NAME time_barrier_sweep COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_time_sweep.py ${KVSTREAM_EXE}
         ${KV_WORK}/time_sweep)
set_tests_properties(time_barrier_sweep PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;sweep" TIMEOUT 600
                     SKIP_RETURN_CODE 77)
