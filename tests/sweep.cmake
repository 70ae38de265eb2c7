# The barrier sweep: phase transition between jl and sphere.
foreach(np 1 2)
  add_test(NAME sweep_phase_np${np} COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_sweep.py ${KVSTREAM_EXE}
           ${KV_WORK}/sweep_np${np} ${np})
  set_tests_properties(sweep_phase_np${np} PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;sweep" TIMEOUT 1200)
endforeach()
# the portable build's rounding: np1 (np2 adds the 2-rank path, not other
# rounding); the sanitizers: np1 too (the longest test; its 2-rank replays are
# the code every other 2-rank test runs under ASan).  docs/TESTING.md
set_property(TEST sweep_phase_np1 APPEND PROPERTY LABELS numerics)
set_property(TEST sweep_phase_np2 APPEND PROPERTY LABELS nosanitize)

# the seed's sliding-window semantics: O(dW) method == full-cache reference
foreach(np 1 2 3 4)
  add_test(NAME unmasked_window_np${np} COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_unmasked.py ${KVSTREAM_EXE}
           ${KV_WORK}/unmasked_np${np} ${np})
  set_tests_properties(unmasked_window_np${np} PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;numerics" TIMEOUT 600)
endforeach()
