# Methods --budget cannot hold (reported, the rest runs; --strict refuses) and
# the per-stream error figures, on a recorded trace at 1 and 2 ranks
# (tests/check_fit.py).
add_test(NAME replay_fit_per_stream COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_fit.py ${KVSTREAM_EXE}
         ${KV_MODEL} ${KV_WORK}/fit)
set_tests_properties(replay_fit_per_stream PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;record;numerics" TIMEOUT 600)
