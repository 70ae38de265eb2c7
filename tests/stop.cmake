# Stops inside a batch: SIGUSR1 to mpirun during a single long
# batch stops within 10 s with exit 3, resumed bitwise (tests/check_stop_fast.py).
add_test(NAME stop_inside_batch COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_stop_fast.py ${KVSTREAM_EXE}
         ${KV_WORK}/stop_inside_batch 2)
set_tests_properties(stop_inside_batch PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;checkpoint" TIMEOUT 900)
# Stops during start-up: handlers before MPI_Init, exit 3 with nothing run,
# a --resume's checkpoint unchanged (tests/check_stop_startup.py).
add_test(NAME stop_at_startup COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_stop_startup.py ${KVSTREAM_EXE}
         ${KV_WORK}/stop_at_startup)
set_tests_properties(stop_at_startup PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;checkpoint" TIMEOUT 600)
