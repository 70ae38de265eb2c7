# Checkpoint / restart through replay.
foreach(np 1 3)
  add_test(NAME checkpoint_np${np} COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_checkpoint.py ${KVSTREAM_EXE}
           ${KV_WORK}/checkpoint_np${np} ${np})
  set_tests_properties(checkpoint_np${np} PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;checkpoint" TIMEOUT 1200)
endforeach()
