# The lower-bound instances: index and packing carry what their
# proofs need (target mass, decodability, separation), for 1 and 2 ranks.
foreach(np 1 2)
  add_test(NAME barrier_instances_np${np} COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_barrier.py ${KVSTREAM_EXE}
           ${KV_WORK}/barrier_np${np} ${np})
  set_tests_properties(barrier_instances_np${np} PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;sweep" TIMEOUT 900)
endforeach()
# as sweep_phase_np*: np1 in the portable pass, np2 not under the sanitizers
set_property(TEST barrier_instances_np1 APPEND PROPERTY LABELS numerics)
set_property(TEST barrier_instances_np2 APPEND PROPERTY LABELS nosanitize)
