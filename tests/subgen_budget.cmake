# SubGen's budget= through replay at 1 and 2 ranks: memory_bytes <= budget (tests/check_subgen_budget.py).
add_test(NAME subgen_budget COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_subgen_budget.py
         ${KVSTREAM_EXE} ${KV_WORK}/subgen_budget)
set_tests_properties(subgen_budget PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;subgen;numerics" TIMEOUT 900)
