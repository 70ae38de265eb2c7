# P is a performance knob only: window, sinks, uniform and topk answer the
# same under 1..4 ranks; --budget gives every budgeted method a peak within
# its budget at every P; bad budgets are one line and exit 2.
add_test(NAME p_invariance COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_pinvariance.py ${KVSTREAM_EXE}
         ${KV_WORK}/pinvariance)
set_tests_properties(p_invariance PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;memory;numerics" TIMEOUT 900)
