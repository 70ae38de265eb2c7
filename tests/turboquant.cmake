# TurboQuant: the quantizer against Max's table, the prod mode's unbiased
# inner product, the round trip, partial_batch = partial; turboquant_replay:
# P-invariance (1 and 3 ranks), budgets, the demo against kivi.  ctest -L quant
kv_unit_test(test_turboquant ${CMAKE_CURRENT_SOURCE_DIR}/test_turboquant.c quant)
add_test(NAME turboquant_replay COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_turboquant.py ${KVSTREAM_EXE}
         ${KV_WORK}/turboquant)
set_tests_properties(turboquant_replay PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;quant" TIMEOUT 600)
# The one-query kernels (tqscan.h), decode and the ingest rotation against
# scalar references within derived float bounds, every bits and odd widths.
kv_unit_test(test_tqscan ${CMAKE_CURRENT_SOURCE_DIR}/test_tqscan.c quant numerics)
