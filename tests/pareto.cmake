# kvstream pareto (docs/PARETO.md): every (method, budget, seed) in one
# replay, the /pareto rows against the per-method groups, the plot, bad
# budgets.  ctest -L pareto
foreach(np 1 2)
  add_test(NAME pareto_rows_np${np} COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_pareto.py ${KVSTREAM_EXE}
           ${KV_WORK}/pareto_np${np} rows ${np})
  # the budget contract (core/budget.h): peak over all ranks <= S x budget
  add_test(NAME pareto_budget_held_np${np} COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_pareto.py
           ${KVSTREAM_EXE} ${KV_WORK}/pareto_held_np${np} held ${np})
endforeach()
add_test(NAME pareto_plot COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_pareto.py ${KVSTREAM_EXE}
         ${KV_WORK}/pareto_plot plot)
add_test(NAME pareto_bad_budget COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_pareto.py ${KVSTREAM_EXE}
         ${KV_WORK}/pareto_bad bad)
set_tests_properties(pareto_rows_np1 pareto_rows_np2 pareto_budget_held_np1 pareto_budget_held_np2 pareto_plot pareto_bad_budget PROPERTIES
                     ENVIRONMENT "${KV_PYENV}" LABELS "mpi;pareto" TIMEOUT 600)
