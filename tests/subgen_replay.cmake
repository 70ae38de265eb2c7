# SubGen through replay under MPI: levelling off, error vs t/s, bound ratio, determinism.
foreach(np 1 2 3 4)
  add_test(NAME subgen_replay_np${np} COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_subgen_replay.py
           ${KVSTREAM_EXE} ${KV_WORK}/subgen_np${np} ${np})
  set_tests_properties(subgen_replay_np${np} PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;subgen;numerics" TIMEOUT 900)
endforeach()
