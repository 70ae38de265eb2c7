# The barrier sweep (issue 4): phase transition between jl and sphere.
foreach(np 1 2)
  add_test(NAME sweep_phase_np${np} COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_sweep.py ${KVSTREAM_EXE}
           ${KV_WORK}/sweep_np${np} ${np})
  set_tests_properties(sweep_phase_np${np} PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;sweep;numerics" TIMEOUT 1200)
endforeach()

# the seed's sliding-window semantics: O(dW) method == full-cache reference
foreach(np 1 2 3 4)
  add_test(NAME unmasked_window_np${np} COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_unmasked.py ${KVSTREAM_EXE}
           ${KV_WORK}/unmasked_np${np} ${np})
  set_tests_properties(unmasked_window_np${np} PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;numerics" TIMEOUT 600)
endforeach()
